"""Label Studio: a tasks JSON (one task per image, in queue order) and the labelling config that goes with it.

Each task's current boxes are a prediction of `rectanglelabels` regions, in percent (0-100) of the
image's `original_width` and `original_height`, as Label Studio's import format has them. Each
region carries its box's suspicion as `score`; the prediction's `score` is the image's suspicion,
which is what the Data Manager sorts tasks by. The task data holds the image URL, the image's rank,
its suspicion, and its reasons in words (`reasons`, one line per box, shown beside the image by the
config's `Text` tag) and as data (`triage`).

Region ids are `a<annotation id>`, so a reviewed export names the boxes of the original file.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from agent.data.coco import Dataset
from agent.evaluation.triage import TriageResult

__all__ = ["FROM_NAME", "MODEL_VERSION", "TO_NAME", "labelling_config", "tasks", "write_label_studio"]

FROM_NAME, TO_NAME, REASONS_NAME = "label", "image", "reasons"
MODEL_VERSION = "metricsmith-triage"
_TASK_FIELDS = {"annotation_id", "rank", "suspicion", "likely_error", "reasons"}
DEFAULT_IMAGE_URL = "/data/local-files/?d="  # Label Studio's local file serving, paths relative to its document root


def labelling_config(category_names: Sequence[str]) -> str:
    """The `<View>` XML: the image, one RectangleLabels label per class, and the reasons as text."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in category_names)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </RectangleLabels>\n'
        f'  <Text name="{REASONS_NAME}" value="$reasons"/>\n'
        "</View>\n"
    )


def tasks(dataset: Dataset, result: TriageResult, image_url: str = DEFAULT_IMAGE_URL) -> list[dict[str, Any]]:
    """One task per image, most suspicious first; `data.image` is `image_url` + the URL-quoted file name."""
    images = {image.id: image for image in dataset.images}
    boxes = {box.annotation_id: box for box in result.boxes}
    out = []
    for item in result.images:
        image = images[item.image_id]
        regions, lines = [], []
        for annotation_id in item.boxes or []:
            box = boxes[annotation_id]
            x, y, w, h = box.bbox or (0.0, 0.0, 0.0, 0.0)
            regions.append(
                {
                    "id": f"a{annotation_id}",
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": "rectanglelabels",
                    "original_width": image.width,
                    "original_height": image.height,
                    "image_rotation": 0,
                    "value": {
                        "x": 100.0 * x / image.width,
                        "y": 100.0 * y / image.height,
                        "width": 100.0 * w / image.width,
                        "height": 100.0 * h / image.height,
                        "rotation": 0,
                        "rectanglelabels": [box.category],
                    },
                    "score": box.suspicion,
                }
            )
            said = "; ".join(reason.text for reason in box.reasons)
            likely = f", likely {box.likely_error}" if box.likely_error else ""
            lines.append(f"#{box.rank} {box.category} (suspicion {box.suspicion:.3f}{likely}): {said}")
        out.append(
            {
                "data": {
                    # Quoted: a name with a space, &, # or ? would end or break the URL (the prefix is the user's).
                    "image": image_url + urllib.parse.quote(image.file_name, safe="/"),
                    "image_id": image.id,
                    "file_name": image.file_name,
                    "rank": item.rank,
                    "suspicion": item.suspicion,
                    "reasons": "\n".join(lines) or "no boxes",
                    "triage": [boxes[a].model_dump(mode="json", include=_TASK_FIELDS) for a in item.boxes or []],
                },
                "predictions": [{"model_version": MODEL_VERSION, "score": item.suspicion, "result": regions}],
            }
        )
    return out


def write_label_studio(
    folder: Path, dataset: Dataset, result: TriageResult, image_url: str = DEFAULT_IMAGE_URL
) -> list[Path]:
    """`folder/tasks.json` and `folder/config.xml`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [category.name for category in dataset.categories]
    written = [folder / "tasks.json", folder / "config.xml"]
    written[0].write_text(json.dumps(tasks(dataset, result, image_url), indent=1), encoding="utf-8")
    written[1].write_text(labelling_config(names), encoding="utf-8")
    return written
