"""Duplicate copy: of two same-class boxes on one object, flags the one that fits the object worse.

`annotation_duplicates` gives both boxes of a duplicated pair the same IoU, so at best half of
what it ranks first is the copy. Here the pair is told apart by how well each box's edges sit on
the object's boundary: a second box drawn by hand, or jittered by a merge of label sources, is
almost always the looser one.

For every other annotation of the image with the same category_id and IoU >= 0.5 (a "twin"), the
edge fit of both boxes is measured: along each side, the mean gradient perpendicular to that side
in a band just inside the box, divided by the same inside band plus a band just outside (as
in box_tightness, close to 1 when the side sits on an edge with flat background outside). The
score is the highest IoU among the twins that fit better than this box, and 0 when no twin does
(or there is none). A high score is suspicious. None for a box under 4 px either way.
"""

import math

import cv2
import numpy as np

NAME = "duplicate_copy"
TITLE = "IoU with a better-fitting same-class twin"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, 1.0)
TAGS = ["geometry", "duplicates"]

_MIN_IOU = 0.5
_EPS = 1.0  # in Sobel units; keeps flat regions at 0.5 instead of 0 / 0


def _box(ann: dict) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 4 or h < 4:
        return None
    return x, y, x + w, y + h


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _edge_fit(gx: np.ndarray, gy: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Mean over the box's sides of inside / (inside + outside) perpendicular gradient."""
    height, width = gx.shape
    x0, y0, x1, y1 = (round(v) for v in box)
    band = min(8, max(2, round(0.05 * min(x1 - x0, y1 - y0))))
    rows = slice(max(y0, 0), min(y1, height))
    cols = slice(max(x0, 0), min(x1, width))
    sides = []
    if x0 - 1 - band >= 0:
        sides.append((gx[rows, x0 : x0 + band], gx[rows, x0 - 1 - band : x0 - 1]))
    if x1 + 1 + band <= width:
        sides.append((gx[rows, x1 - band : x1], gx[rows, x1 + 1 : x1 + 1 + band]))
    if y0 - 1 - band >= 0:
        sides.append((gy[y0 : y0 + band, cols], gy[y0 - 1 - band : y0 - 1, cols]))
    if y1 + 1 + band <= height:
        sides.append((gy[y1 - band : y1, cols], gy[y1 + 1 : y1 + 1 + band, cols]))
    ratios = [
        (float(inside.mean()) + _EPS) / (float(inside.mean()) + float(outside.mean()) + 2 * _EPS)
        for inside, outside in sides
        if inside.size and outside.size
    ]
    return sum(ratios) / len(ratios) if ratios else 0.5


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    own = _box(obj)
    if own is None:
        return None
    twins = []
    for other in scene.get("annotations") or []:
        if other.get("id") == obj.get("id") or other.get("category_id") != obj.get("category_id"):
            continue
        theirs = _box(other)
        if theirs is not None and (overlap := _iou(own, theirs)) >= _MIN_IOU:
            twins.append((overlap, theirs))
    if not twins:
        return 0.0
    # Gradients of the region around the pair only: a full-image Sobel per box would dominate.
    height, width = image.shape[:2]
    boxes = [own, *(box for _, box in twins)]
    pad = 12
    cx0 = max(int(min(b[0] for b in boxes)) - pad, 0)
    cy0 = max(int(min(b[1] for b in boxes)) - pad, 0)
    cx1 = min(int(max(b[2] for b in boxes)) + pad + 1, width)
    cy1 = min(int(max(b[3] for b in boxes)) + pad + 1, height)
    if cx1 - cx0 < 3 or cy1 - cy0 < 3:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(image[cy0:cy1, cx0:cx1]), cv2.COLOR_RGB2GRAY)
    gx = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3))
    gy = np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))

    def local(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        return box[0] - cx0, box[1] - cy0, box[2] - cx0, box[3] - cy0

    own_fit = _edge_fit(gx, gy, local(own))
    better = [overlap for overlap, box in twins if _edge_fit(gx, gy, local(box)) > own_fit]
    return max(better, default=0.0)
