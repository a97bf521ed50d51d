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

The vector is exact arithmetic on the pixels, so it is the same on every machine: the box is
averaged down to 48 x 48 cells with integer sums (cv2.resize's area filter rounds in floating
point, which can follow the CPU's instruction set), and the weights are whole numbers, whose sums
are exact in any order. A difference in the last bit would otherwise reorder near-tied neighbours.
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

_SIDE = 48  # the box is averaged down to this many cells each way: the colours, not the detail, matter
_MIN_SATURATION = 60
_MIN_VALUE = 40


def _centre_weights() -> np.ndarray:
    bump = [math.exp(-0.5 * (((k + 0.5) / _SIDE - 0.5) / 0.3) ** 2) for k in range(_SIDE)]
    return np.rint(np.outer(bump, bump) * 10_000).astype(np.float64)  # whole numbers


_WEIGHTS = _centre_weights().ravel()
_BIN_WEIGHTS = np.concatenate([_WEIGHTS, _WEIGHTS])  # each cell counts twice: colour or grey, and saturation
_TOTAL_WEIGHT = _WEIGHTS.sum()


def _cell_edges(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each of the _SIDE cells starts along a side, and where it ends: it holds at least 1 pixel."""
    edges = (np.arange(_SIDE + 1) * length) // _SIDE
    starts = edges[:-1]
    return starts, np.maximum(edges[1:], starts + 1)


def _cell_means(crop: np.ndarray) -> np.ndarray:
    """The crop as _SIDE x _SIDE mean colours, rounded half up; a side under _SIDE px repeats its pixels."""
    row_starts, row_ends = _cell_edges(crop.shape[0])
    column_starts, column_ends = _cell_edges(crop.shape[1])
    # Each cell's sum from the crop's summed-area table: whole numbers, exact (32-bit while the whole crop's
    # sum fits, else 64-bit floats, exact below 2**53). A cell runs from its start to its end: one pixel where
    # a side under _SIDE px repeats it. The table at the cells' end rows less at their start rows gives each
    # band of cells' running sums along the columns; the same at the columns then gives the cells (one
    # difference per axis, rather than four corners per cell).
    depth = cv2.CV_32S if crop.shape[0] * crop.shape[1] * 255 < 2**31 else cv2.CV_64F
    table = cv2.integral(crop, sdepth=depth)
    rows = table.take(np.concatenate([row_ends, row_starts]), axis=0)
    bands = rows[:_SIDE] - rows[_SIDE:]
    columns = bands.take(np.concatenate([column_ends, column_starts]), axis=1)
    sums = (columns[:, :_SIDE] - columns[:, _SIDE:]).astype(np.float64)
    counts = np.outer(row_ends - row_starts, column_ends - column_starts)[..., None]
    # Rounded half up: floor((2 * sum + count) / (2 * count)). In float64 the quotient of two whole numbers
    # below 2**53 never rounds up to the next whole number, so its floor is the integer division's.
    return np.floor((2 * sums + counts) / (2 * counts)).astype(np.uint8)


def score(image: np.ndarray, obj: dict, scene: dict) -> list[float] | None:
    height, width = image.shape[:2]
    x, y, w, h = (float(v) for v in obj["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 4 or h < 4:
        return None
    x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
    x1, y1 = min(math.ceil(x + w), width), min(math.ceil(y + h), height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    cells = _cell_means(image[y0:y1, x0:x1])
    # The cells as one row of pixels: OpenCV vectorises the conversion along a row, and a row of 48 is too
    # short for it on wide-vector CPUs (the same result, several times slower). OpenCV hue runs 0..179.
    hsv = cv2.cvtColor(cells.reshape(1, -1, 3), cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.int32)
    hue, saturation, value = hsv.T

    # One weighted histogram of 24 bins: each cell adds its weight to its hue bin (0-11) when coloured, else
    # to its value bin (12-17), and to its saturation bin (18-23).
    coloured = (saturation >= _MIN_SATURATION) & (value >= _MIN_VALUE)
    colour_bins = np.where(coloured, hue * 12 // 180, 12 + value * 6 // 256)
    bins = np.concatenate([colour_bins, 18 + saturation * 6 // 256])
    return (np.bincount(bins, weights=_BIN_WEIGHTS, minlength=24) / _TOTAL_WEIGHT).tolist()
