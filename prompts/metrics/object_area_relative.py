"""Relative object size: the area of the box inside the image divided by the image area (0 to 1).

The box [x, y, w, h] is clipped to the image first, so a box hanging over the border counts only
its visible part; for a box inside the image this is exactly w·h / (W·H). A tiny value points at a
degenerate or accidental box (a stray click, a zero-width box) or at an object too small to be
labelled reliably. Returns None when the box lies entirely outside the image.

On a dataset whose images all have one size it ranks boxes exactly as `object_area_absolute`
does (the demo's table shows the same figures for both); it differs only where image sizes vary.
Neither finds the injected errors of the README's tables much better than chance: a box's size
alone says little without its class (`class_geometry_outlier` compares it with its class).
"""

import math

import numpy as np

NAME = "object_area_relative"
TITLE = "Box area / image area"
LEVEL = "object"
SUSPICIOUS = "low"
RANGE = (0.0, 1.0)


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    height, width = image.shape[:2]
    try:
        x, y, w, h = (float(v) for v in obj["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or width == 0 or height == 0:
        return None
    # A negative size is an empty box: it should land at the suspicious end, not disappear.
    w, h = max(w, 0.0), max(h, 0.0)
    if x > width or y > height or x + w < 0 or y + h < 0:
        return None
    visible_w = min(x + w, width) - max(x, 0.0)
    visible_h = min(y + h, height) - max(y, 0.0)
    return visible_w * visible_h / (width * height)
