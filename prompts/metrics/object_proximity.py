"""Object proximity: how close the nearest other box of the image is, relative to the boxes' sizes.

For every other annotation of the image (any class) we take the distance between the two box
centres divided by the mean of the two box diagonals, and return the smallest such ratio. Two
boxes on one object (a duplicate, or a copy of a box pasted nearby) give a ratio near 0;
objects touching side by side give about 0.5 to 1; isolated objects give more. Low values are
suspicious: crowded places are where duplicates, swapped neighbours and misplaced boxes gather.
None when the image has no other usable box, or this box is empty.
"""

import math

import numpy as np

NAME = "object_proximity"
TITLE = "Distance to the nearest other box (in box diagonals)"
LEVEL = "object"
SUSPICIOUS = "low"
RANGE = (0.0, None)
TAGS = ["geometry", "context"]


def _centre_and_diagonal(ann: dict) -> tuple[float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return x + w / 2.0, y + h / 2.0, math.hypot(w, h)


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    own = _centre_and_diagonal(obj)
    if own is None:
        return None
    cx, cy, diagonal = own
    nearest = None
    for other in scene.get("annotations") or []:
        if other.get("id") == obj.get("id"):
            continue
        theirs = _centre_and_diagonal(other)
        if theirs is None:
            continue
        ox, oy, other_diagonal = theirs
        ratio = math.hypot(cx - ox, cy - oy) / ((diagonal + other_diagonal) / 2.0)
        nearest = ratio if nearest is None else min(nearest, ratio)
    return nearest
