"""Share of near-black or near-white, colourless pixels inside a panda's box (0 to 1).

The box is clipped to the image and converted to HSV (OpenCV scale, 0 to 255). A pixel counts
when it is near-white (V >= 170 and S <= 64) or near-black (V <= 70 and chroma S·V/255 <= 25;
for dark pixels the ratio S is dominated by noise, so their absolute colourfulness is used
instead). A panda is black and white, so its box should be largely made of such pixels; a low
share means the box holds something else: a bear or another animal labelled as panda, or a box
that missed the animal. Only meaningful for the class "panda": None for every other class, and
None when the box has no pixel inside the image.
"""

import math

import cv2
import numpy as np

NAME = "black_white_share"
TITLE = "Black-and-white share (pandas)"
LEVEL = "object"
SUSPICIOUS = "low"
RANGE = (0.0, 1.0)

_WHITE_V_MIN = 170
_WHITE_S_MAX = 64
_BLACK_V_MAX = 70
_BLACK_CHROMA_MAX = 25


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    if str(obj.get("category", "")).strip().lower() != "panda":
        return None
    height, width = image.shape[:2]
    try:
        x, y, w, h = (float(v) for v in obj["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    # Every pixel the box touches, clipped to the image.
    x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
    x1, y1 = min(math.ceil(x + w), width), min(math.ceil(y + h), height)
    if x1 <= x0 or y1 <= y0:
        return None
    # Split into contiguous planes: numpy compares those much faster than every third byte of the HSV image.
    _, s, v = cv2.split(cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2HSV))
    white = (v >= _WHITE_V_MIN) & (s <= _WHITE_S_MAX)
    black = (v <= _BLACK_V_MAX) & (s.astype(np.uint16) * v <= _BLACK_CHROMA_MAX * 255)
    return float(np.count_nonzero(white | black)) / float(s.size)
