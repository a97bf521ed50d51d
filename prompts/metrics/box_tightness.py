"""Box tightness: whether the box edges sit on the object's boundary (0 to 1, 0.5 = no evidence).

For each side of the box (rounded to whole pixels) we take two thin bands running along it,
each `b` pixels deep, with b = 5% of the shorter box side, clamped to 2..8 px:
  - inside: the b pixel rows/columns just inside the box edge;
  - outside: the b rows/columns just outside it, skipping the one row/column that touches the
    edge, because a 3×3 Sobel at an edge responds on both of its sides.
In each band we average the gradient component perpendicular to that side (|Sobel x| for the
left and right sides, |Sobel y| for top and bottom) of the grey image. The side scores
(inside + 1) / (inside + outside + 2), and the result is the mean over the sides that can be
evaluated (a side whose outside band would leave the image is skipped).

A tight box has an object edge just inside each side and background just outside: close to 1.
A loose box has background on both sides of its edges: about 0.5, or 0.5 exactly on flat
backgrounds. A box that is shifted or too small cuts through the object, so strong edges fall
outside: below 0.5 on those sides. Low values are suspicious. None when the box is smaller than
4 px either way or no side can be evaluated.
"""

import math

import cv2
import numpy as np

NAME = "box_tightness"
TITLE = "Box tightness (edge alignment)"
LEVEL = "object"
SUSPICIOUS = "low"
RANGE = (0.0, 1.0)

# Added to both bands, in Sobel units (a one-grey-level step gives 4): it keeps flat regions
# at 0.5 instead of dividing zero by zero, and is negligible next to any real edge.
_EPS = 1.0


def _mean(values: np.ndarray) -> float:
    # The float32 sum divided in float32: the very value of values.mean(), without its Python-level overhead.
    return float(values.sum() / values.size) if values.size else 0.0


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    height, width = image.shape[:2]
    try:
        x, y, w, h = (float(v) for v in obj["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 4 or h < 4:
        return None
    # Box edges on the pixel grid; x1, y1 are exclusive.
    x0, y0, x1, y1 = round(x), round(y), round(x + w), round(y + h)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return None
    b = min(8, max(2, round(0.05 * min(w, h))))

    # Work on the box plus a margin only: a full-image Sobel per object would dominate the cost.
    pad = b + 2
    cx0, cy0 = max(x0 - pad, 0), max(y0 - pad, 0)
    cx1, cy1 = min(x1 + pad, width), min(y1 + pad, height)
    grey = cv2.cvtColor(image[cy0:cy1, cx0:cx1], cv2.COLOR_RGB2GRAY)
    gx = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3))
    gy = np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))

    # Box in crop coordinates, and the stretch of each side that lies in the image.
    bx0, by0, bx1, by1 = x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0
    rows = slice(max(by0, 0), min(by1, cy1 - cy0))
    cols = slice(max(bx0, 0), min(bx1, cx1 - cx0))

    sides: list[tuple[np.ndarray, np.ndarray]] = []
    if x0 - 1 - b >= 0:  # left
        sides.append((gx[rows, bx0 : bx0 + b], gx[rows, bx0 - 1 - b : bx0 - 1]))
    if x1 + 1 + b <= width:  # right
        sides.append((gx[rows, bx1 - b : bx1], gx[rows, bx1 + 1 : bx1 + 1 + b]))
    if y0 - 1 - b >= 0:  # top
        sides.append((gy[by0 : by0 + b, cols], gy[by0 - 1 - b : by0 - 1, cols]))
    if y1 + 1 + b <= height:  # bottom
        sides.append((gy[by1 - b : by1, cols], gy[by1 + 1 : by1 + 1 + b, cols]))

    ratios = []
    for inside, outside in sides:
        if inside.size == 0 or outside.size == 0:
            continue
        g_in, g_out = _mean(inside), _mean(outside)
        ratios.append((g_in + _EPS) / (g_in + g_out + 2.0 * _EPS))
    if not ratios:
        return None
    return float(sum(ratios) / len(ratios))
