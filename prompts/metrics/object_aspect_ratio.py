"""Aspect ratio of the box: width divided by height.

Values far above those of the rest of the dataset mark boxes that are much wider than tall,
typically a box dragged along one axis only, a swapped width/height, or a thin sliver. (Very
tall boxes give values near 0; rank the other end of the scale to look at those.) Returns None
for a box with no height, whose ratio is undefined.
"""

import math

import numpy as np

NAME = "object_aspect_ratio"
TITLE = "Box aspect ratio (w / h)"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0, None)


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    try:
        w, h = float(obj["bbox"][2]), float(obj["bbox"][3])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if not (math.isfinite(w) and math.isfinite(h)) or h <= 0 or w < 0:
        return None
    return w / h
