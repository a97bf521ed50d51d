"""Appearance consistency: the share of the 10 most similar-looking boxes that carry another class.

A feature metric: score() describes the box's colours with a short vector, and metricsmith
scores each box by comparing it with every other box of the dataset (the k = NEIGHBOURS
nearest, by Euclidean distance after standardising each feature). A box labelled "bear" that
looks like the pandas around it in feature space is likely a class swap.

The vector (24 numbers, each a share of the box's weighted pixels, so box size does not matter):
  - 12 hue bins of the saturated pixels (saturation >= 60 of 255 and value >= 40), one per 30°
    of hue;
  - 6 value bins of the unsaturated pixels, from black to white: greys, blacks and whites
    tell a panda from a bear where hue cannot;
  - 6 saturation bins over all pixels.
Pixels are weighted by a Gaussian centred on the box (sigma = 30% of each side), because an
animal fills the middle of its box while the corners hold background.
None for a box under 4 px either way or wholly outside the image.
"""

import math

import cv2
import numpy as np

NAME = "appearance_neighbours"
TITLE = "Nearest neighbours of another class (colour)"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, 1.0)
TAGS = ["appearance", "class"]
OUTPUT = "features"
NEIGHBOURS = 10

_SIDE = 48  # crops are resized to this many pixels each way: the colours, not the detail, matter
_MIN_SATURATION = 60
_MIN_VALUE = 40


def _centre_weights() -> np.ndarray:
    axis = (np.arange(_SIDE, dtype=np.float32) + 0.5) / _SIDE - 0.5
    bump = np.exp(-0.5 * (axis / 0.3) ** 2)
    weights = np.outer(bump, bump)
    return weights / weights.sum()


_WEIGHTS = _centre_weights()


def score(image: np.ndarray, obj: dict, scene: dict) -> list[float] | None:
    height, width = image.shape[:2]
    x, y, w, h = (float(v) for v in obj["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 4 or h < 4:
        return None
    x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
    x1, y1 = min(math.ceil(x + w), width), min(math.ceil(y + h), height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    crop = cv2.resize(image[y0:y1, x0:x1], (_SIDE, _SIDE), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)  # OpenCV hue runs 0..179
    hue, saturation, value = (hsv[..., i].astype(np.int32) for i in range(3))

    coloured = (saturation >= _MIN_SATURATION) & (value >= _MIN_VALUE)
    hue_bins = np.bincount((hue[coloured] * 12) // 180, weights=_WEIGHTS[coloured], minlength=12)
    grey = ~coloured
    value_bins = np.bincount((value[grey] * 6) // 256, weights=_WEIGHTS[grey], minlength=6)
    saturation_bins = np.bincount((saturation * 6 // 256).ravel(), weights=_WEIGHTS.ravel(), minlength=6)
    return np.concatenate([hue_bins, value_bins, saturation_bins]).tolist()
