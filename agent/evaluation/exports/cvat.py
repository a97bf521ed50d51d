"""CVAT: a "COCO 1.0" annotations file of the flagged images, the suspicion and reasons as attributes.

CVAT imports COCO through Datumaro, which reads an annotation's extra attributes from its
`attributes` object (beside CVAT's own `occluded`), and reads a box as a rectangle when its
`segmentation` is empty. CVAT keeps an imported attribute only when the task's label declares it:
declare `suspicion` (number), `triage_rank` (number), `likely_error` (text) and `reasons` (text)
on every label before importing (the README shows how).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.data.coco import Dataset
from agent.evaluation.ranking import budget_items
from agent.evaluation.triage import TriageResult

__all__ = ["cvat_document", "flagged_images", "write_cvat"]


def flagged_images(result: TriageResult, share: float) -> list[int]:
    """The image ids at the top of the image queue: ceil(share * images), at least one, in queue order."""
    count = max(1, budget_items(len(result.images), share))
    return [item.image_id for item in result.images[:count]]


def cvat_document(dataset: Dataset, result: TriageResult, share: float) -> dict[str, Any]:
    """The COCO document of the flagged images and all their boxes, each box's triage as attributes."""
    flagged = flagged_images(result, share)
    keep = set(flagged)
    boxes = {box.annotation_id: box for box in result.boxes}
    order = {image_id: place for place, image_id in enumerate(flagged)}
    images = sorted((image for image in dataset.images if image.id in keep), key=lambda image: order[image.id])
    annotations = []
    for annotation in dataset.annotations:
        if annotation.image_id not in keep:
            continue
        box = boxes[annotation.id]
        annotations.append(
            {
                "id": annotation.id,
                "image_id": annotation.image_id,
                "category_id": annotation.category_id,
                "bbox": [float(v) for v in annotation.bbox],
                "area": float(annotation.area),
                "iscrowd": annotation.iscrowd,
                "segmentation": [],
                "attributes": {
                    "occluded": False,
                    "suspicion": round(box.suspicion, 6),
                    "triage_rank": box.rank,
                    "likely_error": box.likely_error or "",
                    "reasons": "; ".join(reason.text for reason in box.reasons),
                },
            }
        )
    return {
        "info": {"description": "metricsmith triage: the flagged images, most suspicious first"},
        "licenses": [],
        "images": [
            {"id": image.id, "file_name": image.file_name, "width": image.width, "height": image.height}
            for image in images
        ],
        "categories": [
            {"id": category.id, "name": category.name, "supercategory": category.supercategory or ""}
            for category in dataset.categories
        ],
        "annotations": annotations,
    }


def write_cvat(folder: Path, dataset: Dataset, result: TriageResult, share: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "annotations.json"
    path.write_text(json.dumps(cvat_document(dataset, result, share), indent=1), encoding="utf-8")
    return [path]
