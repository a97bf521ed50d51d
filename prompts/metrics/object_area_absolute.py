"""Absolute object size: the area in pixels of the part of the box that lies inside the image.

The box [x, y, w, h] is clipped to the image first. A very small box is often a stray click or an
object too small to label reliably, so the low end is the suspicious one. Unlike the relative area,
this value does not change with the image size, which suits detectors with a fixed minimum object
size. Returns None when the box lies entirely outside the image.
"""

import math

import numpy as np

NAME = "object_area_absolute"
TITLE = "Box area in pixels"
LEVEL = "object"
SUSPICIOUS = "low"
RANGE = (0.0, None)


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    height, width = image.shape[:2]
    try:
        x, y, w, h = (float(v) for v in obj["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    w, h = max(w, 0.0), max(h, 0.0)
    if x > width or y > height or x + w < 0 or y + h < 0:
        return None
    return (min(x + w, width) - max(x, 0.0)) * (min(y + h, height) - max(y, 0.0))
