"""A cleaned COCO: the user's dataset minus the most suspicious boxes (or their whole images), and what went.

The document is the user's own, read as it is, with only the `annotations` (and, with
`drop_images`, the `images`) cut: every other key and field stays. `removed.json` lists each
removed box with its rank, suspicion, likely error and reasons.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.errors import UserError
from agent.evaluation.ranking import budget_items
from agent.evaluation.triage import TriageItem, TriageResult

__all__ = ["cleaned_document", "dropped_boxes", "write_cleaned"]


def dropped_boxes(result: TriageResult, top: int | None, share: float | None) -> list[TriageItem]:
    """The first `top` boxes of the queue, or the first ceil(share * boxes); exactly one of the two is given."""
    if (top is None) == (share is None):
        raise UserError("the coco export needs exactly one of --drop-top K and --drop-share P")
    if share is not None and not 0 < share < 1:
        raise UserError(f"--drop-share must be above 0 and below 1, got {share}")
    if top is not None and top < 1:
        raise UserError(f"--drop-top must be at least 1, got {top}")
    if top is not None and top >= len(result.boxes):  # as --drop-share 1 is refused: nothing would be left
        raise UserError(f"--drop-top {top} would drop every one of the {len(result.boxes)} boxes; give fewer")
    count = top if top is not None else budget_items(len(result.boxes), share)  # type: ignore[arg-type]
    return result.boxes[:count]


def cleaned_document(
    document: dict[str, Any], dropped: list[TriageItem], drop_images: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the cleaned document, the removed.json record)."""
    boxes = {item.annotation_id for item in dropped}
    images = {item.image_id for item in dropped} if drop_images else set()
    annotations = [a for a in document["annotations"] if a["id"] not in boxes and a["image_id"] not in images]
    kept_images = [image for image in document["images"] if image["id"] not in images]
    removed = {
        "rule": "whole images of the flagged boxes" if drop_images else "flagged boxes",
        "boxes": [item.model_dump(mode="json", exclude={"scores", "boxes", "level"}) for item in dropped],
        "images": sorted(images),
        "annotations_removed": len(document["annotations"]) - len(annotations),
    }
    return {**document, "images": kept_images, "annotations": annotations}, removed


def write_cleaned(
    folder: Path, source: Path, document: dict[str, Any], dropped: list[TriageItem], drop_images: bool = False
) -> list[Path]:
    """`folder/annotations.json` and `folder/removed.json`; refuses to write over `source`."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "annotations.json"
    if target.resolve() == Path(source).resolve():
        raise UserError(f"{target}: is the input annotations file; choose another --out")
    cleaned, removed = cleaned_document(document, dropped, drop_images)
    target.write_text(json.dumps(cleaned), encoding="utf-8")
    (folder / "removed.json").write_text(json.dumps(removed, indent=1), encoding="utf-8")
    return [target, folder / "removed.json"]
