"""How close the box comes to the image border, from 0 (a point at the centre) to 1 (touching).

For each side the gap between the box and the image border is measured (0 if the box reaches or
crosses it) and divided by half the image width (left, right) or height (top, bottom), the
largest gap possible. The score is 1 minus the smallest normalised gap, i.e. the maximum over the
four sides of the closeness. High values mark objects cut by the frame: their true extent is
unknown, so their boxes are often inconsistent (labelled to the border, or guessed beyond it).
Returns None when the box lies entirely outside the image.

It points at objects the frame cuts, for review; it is not a label-error detector. In the README's
tables (errors injected into the demo and into aerial tiles) it ranks errors like chance (lift
about 1.0x): the injected errors are not drawn near the border more than elsewhere.
"""

import math

import numpy as np

NAME = "border_closeness"
TITLE = "Closeness to the image border"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, 1.0)


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    height, width = image.shape[:2]
    try:
        x, y, w, h = (float(v) for v in obj["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or width == 0 or height == 0:
        return None
    w, h = max(w, 0.0), max(h, 0.0)
    if x > width or y > height or x + w < 0 or y + h < 0:
        return None
    gaps = (
        max(x, 0.0) / (width / 2.0),
        max(width - (x + w), 0.0) / (width / 2.0),
        max(y, 0.0) / (height / 2.0),
        max(height - (y + h), 0.0) / (height / 2.0),
    )
    return min(max(1.0 - min(gaps), 0.0), 1.0)
