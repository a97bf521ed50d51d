"""Frame object density: the share of the image covered by the union of all its boxes (0 to 1).

Overlapping boxes count once, because the union is rasterised on a mask of the image. A frame
packed with boxes is a likely place for duplicates, loose boxes and confusions, so the high end is
the suspicious one. An image without annotations scores 0.
"""

import math

import cv2
import numpy as np

NAME = "frame_object_density"
TITLE = "Share of the image covered by boxes"
LEVEL = "image"
SUSPICIOUS = "high"
RANGE = (0.0, 1.0)


def score(image: np.ndarray, scene: dict) -> float | None:
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        return None
    covered = np.zeros((height, width), dtype=np.uint8)
    for obj in scene.get("annotations", []):
        try:
            x, y, w, h = (float(v) for v in obj["bbox"])
        except (KeyError, TypeError, ValueError):
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            continue
        # Whole pixels the box touches: floor the start, ceil the end, clip to the image.
        left, top = max(0, math.floor(x)), max(0, math.floor(y))
        right, bottom = min(width, math.ceil(x + max(w, 0.0))), min(height, math.ceil(y + max(h, 0.0)))
        if right > left and bottom > top:
            covered[top:bottom, left:right] = 1
    # cv2 counts the pixels; numpy's mean of a mask would pass over it in float64.
    return cv2.countNonZero(covered) / covered.size
