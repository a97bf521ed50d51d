"""Every file of a triage run under its --out folder: triage.jsonl, summary.json and each chosen export.

The user's files are never written: the folder must be new, empty, or an earlier triage run's (it
holds a triage.jsonl), and no file written may be one of the inputs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agent.data.coco import Dataset
from agent.errors import UserError
from agent.evaluation.exports.cleaned import dropped_boxes, write_cleaned
from agent.evaluation.exports.cvat import write_cvat
from agent.evaluation.exports.label_studio import DEFAULT_IMAGE_URL, write_label_studio
from agent.evaluation.exports.splits import DEFAULT_SHARES, assign_splits, image_values, write_splits
from agent.evaluation.ranking import MetricScores
from agent.evaluation.triage import TriageResult, write_jsonl
from agent.metrics.results import check_output_folder

__all__ = ["EXPORTS", "ExportOptions", "check_out_folder", "parse_exports", "remove_stale_exports", "write_all"]

Export = Literal["label-studio", "cvat", "coco", "splits", "fiftyone"]
EXPORTS: tuple[Export, ...] = ("label-studio", "cvat", "coco", "splits", "fiftyone")


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exports: list[Export] = []
    flag_share: float = 0.05  # CVAT: the top share of the image queue
    drop_top: int | None = None
    drop_share: float | None = None
    drop_images: bool = False
    split_metrics: list[str] = ["triage"]
    split_shares: dict[str, float] = DEFAULT_SHARES
    split_seed: int = 0
    image_url: str = DEFAULT_IMAGE_URL


def parse_exports(text: str) -> list[Export]:
    """`label-studio,cvat,...` as a list; UserError naming an unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTS]
    if unknown:
        available = ", ".join(name for name in EXPORTS if name != "fiftyone")
        raise UserError(f"--export {unknown[0]}: unknown; the exports are {available}")
    if "fiftyone" in names:
        raise UserError("--export fiftyone: not available in this version (see the README's triage section)")
    return list(dict.fromkeys(names))  # type: ignore[arg-type]


def check_out_folder(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse a folder that holds anything but an earlier triage run, or that holds an input file."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "triage.jsonl").is_file():
        raise UserError(f"--out {out}: not empty and not an earlier triage run's folder; choose a new folder")
    check_output_folder(out, folder=out)  # before the scoring, not after it
    resolved = out.resolve()
    for path in inputs:
        if resolved in Path(path).resolve().parents:
            raise UserError(f"--out {out}: holds the input {path}; choose a folder outside the inputs")


def remove_stale_exports(out: Path, exports: Sequence[Export]) -> list[Path]:
    """Remove the export folders an earlier triage run left in `out` that this run does not write; those removed.

    They would no longer match this run's triage.jsonl. `check_out_folder` has made sure `out` is new, empty or
    an earlier triage run's, so a folder of an export's name in it is that run's export.
    """
    removed = []
    for name in EXPORTS:
        folder = out / name
        if name not in exports and folder.is_dir() and (out / "triage.jsonl").is_file():
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


def write_all(
    out: Path,
    dataset: Dataset,
    document: dict[str, Any],
    result: TriageResult,
    metrics: Sequence[MetricScores],
    options: ExportOptions,
) -> list[Path]:
    """Write triage.jsonl, summary.json and every export; the paths written, in that order."""
    # Checked before anything is written, so that a bad option leaves no half-written run.
    dropped = dropped_boxes(result, options.drop_top, options.drop_share) if "coco" in options.exports else []
    annotation_image = {a.id: a.image_id for a in dataset.annotations}
    assigned = {}
    if "splits" in options.exports:
        values = image_values(result, metrics, annotation_image, options.split_metrics)
        classes: dict[int, list[int]] = {}
        for annotation in dataset.annotations:
            classes.setdefault(annotation.image_id, []).append(annotation.category_id)
        assigned = assign_splits([image.id for image in dataset.images], classes, values, options.split_shares,
                                 options.split_seed)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "triage.jsonl", out / "summary.json"]
    write_jsonl(written[0], result)
    summary = {
        "method": result.method,
        "metrics": [metric.name for metric in metrics],
        "boxes": len(result.boxes),
        "images": len(result.images),
        "notes": result.notes,
        "figures": result.figures.model_dump() if result.figures else None,
    }
    written[1].write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if "label-studio" in options.exports:
        written += write_label_studio(out / "label-studio", dataset, result, options.image_url)
    if "cvat" in options.exports:
        written += write_cvat(out / "cvat", dataset, result, options.flag_share)
    if "coco" in options.exports:
        written += write_cleaned(out / "coco", dataset.annotations_path, document, dropped, options.drop_images)
    if "splits" in options.exports:
        written += write_splits(out / "splits", document, assigned)
    return written
