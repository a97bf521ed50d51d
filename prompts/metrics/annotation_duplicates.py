"""Duplicate annotations: the highest IoU between this box and any other box of the same class.

IoU (intersection over union) of the [x, y, w, h] boxes, compared with every other annotation of
the image that has the same category_id; 0 when there is none. Two boxes of one class that
overlap almost completely (IoU near 1) are usually the same object labelled twice, by two
annotators or by a merge of label sources; genuinely overlapping objects of one class rarely
exceed about 0.7.
"""

import math

import numpy as np

NAME = "annotation_duplicates"
TITLE = "Max IoU with another box of the same class"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, 1.0)


def _box(ann: dict) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h


def _same(a: dict, b: dict) -> bool:
    # Prefer ids: the scene may hold copies of the dict we were given, not the object itself.
    if a.get("id") is not None and b.get("id") is not None:
        return a["id"] == b["id"]
    return a is b


def _category(ann: dict) -> object:
    return ann.get("category_id", ann.get("category"))


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    box = _box(obj)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    best = 0.0
    for other in scene.get("annotations") or []:
        if _same(obj, other) or _category(other) != _category(obj):
            continue
        other_box = _box(other)
        if other_box is None:
            continue
        ox0, oy0, ox1, oy1 = other_box
        iw = min(x1, ox1) - max(x0, ox0)
        ih = min(y1, oy1) - max(y0, oy0)
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        best = max(best, inter / (area + (ox1 - ox0) * (oy1 - oy0) - inter))
    return best
