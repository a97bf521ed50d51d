"""Background likeness: whether the box looks more like the image's background than like its class's boxes (0 to 1).

A spurious box (a stray click, a box on an empty patch) holds background. The box's content is
described by a few numbers: mean lightness, red-green and yellow-blue, the spread of each, and the
roughness of lightness (mean absolute difference between neighbouring samples). The same numbers
are taken for:
  - background windows: windows of the box's size, laid over the image in steps of half its
    size (at most about 16 steps each way), that other boxes cover by at most 20% and that
    overlap the box itself by IoU 0.1 at most;
  - the image's other boxes of the same class (of any class when it has no other), leaving out
    boxes that overlap this one by IoU above 0.5 (its own duplicates).
Each number is divided by its spread over every window of the image, so that no unit dominates.
With d_bg the mean distance to the 3 nearest background windows and d_class the mean distance to
the 3 nearest other boxes, the score is d_class / (d_class + d_bg): near 1 when the box is like
background and unlike its class, near 0 the other way.

High is suspicious. The image is read on a grid of at most about 128 samples along its longer
side (every pixel of a small image), so the cost is the same for any box. None for a box under 2
samples either way or outside the image, when the image has no other box, or no background window.
"""

import math

import cv2
import numpy as np

NAME = "background_likeness"
TITLE = "Looks like background, not its class"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, 1.0)
TAGS = ["appearance", "spurious"]

_SAMPLES = 64  # samples along the image's longer side, at most
_MAX_COVER = 0.2  # a background window may have this share of it under other boxes
_MAX_SELF_IOU = 0.1
_MAX_TWIN_IOU = 0.5
_NEAREST = 3
_LATTICE = 16  # at most about this many window positions each way, so that small boxes stay cheap


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box `a` against each row of `b`, boxes as [x0, y0, x1, y1]."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-12)


def _tables(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Summed-area tables of the planes behind the description, (rows + 1, columns + 1, planes) each.

    Whole numbers (each feature is rescaled by its spread later, so the planes' units don't matter): the
    lightness R+G+B, red-green R-G, yellow-blue R+G-2B and the roughness (absolute differences of lightness
    to the next sample right and down), as int16. cv2.integral2 sums them, and their squares, in float64:
    every sum is a whole number far below 2**53, so exact, the same on every machine and in any order. The
    first table holds the four planes, the second their squares (the roughness's is not used).
    """
    pixels = grid.astype(np.int16)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    planes = np.empty((*grid.shape[:2], 4), dtype=np.int16)
    lightness, red_green, yellow_blue, rough = np.moveaxis(planes, -1, 0)
    np.add(red, green, out=lightness)
    lightness += blue
    np.subtract(red, green, out=red_green)
    np.add(red, green, out=yellow_blue)
    yellow_blue -= blue
    yellow_blue -= blue
    rough[...] = 0
    rough[:, :-1] += np.abs(np.diff(lightness, axis=1))
    rough[:-1, :] += np.abs(np.diff(lightness, axis=0))
    return cv2.integral2(planes, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)


def _describe(tables: tuple[np.ndarray, np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """Per box [top, left, bottom, right) in grid cells: mean colours, their spreads and the roughness."""
    top, left, bottom, right = (boxes[:, k] for k in range(4))
    sums, squares = (
        table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left] for table in tables
    )
    cells = np.maximum((bottom - top) * (right - left), 1)[:, None]
    means, mean_squares = sums / cells, squares[:, :3] / cells
    spread = np.sqrt(np.clip(mean_squares - means[:, :3] ** 2, 0, None))
    return np.concatenate([means[:, :3], spread, means[:, 3:4]], axis=1)


def _cells(corners: np.ndarray, step: float, rows: int, columns: int) -> np.ndarray:
    """Boxes [x0, y0, x1, y1] in pixels as [top, left, bottom, right) grid cells, at least one cell each way."""
    # np.minimum(np.maximum(...)) is np.clip (each low bound is at most its high bound), without its overhead.
    top = np.minimum(np.maximum(np.floor(corners[:, 1] / step), 0), rows - 1).astype(np.int64)
    left = np.minimum(np.maximum(np.floor(corners[:, 0] / step), 0), columns - 1).astype(np.int64)
    bottom = np.minimum(np.maximum(np.ceil(corners[:, 3] / step), top + 1), rows).astype(np.int64)
    right = np.minimum(np.maximum(np.ceil(corners[:, 2] / step), left + 1), columns).astype(np.int64)
    return np.stack([top, left, bottom, right], axis=1)


def _corners(annotation: dict) -> list[float] | None:
    try:
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return [x, y, x + w, y + h]


def _all_corners(annotations: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every annotation's [x0, y0, x1, y1] (n, 4), and whether it is readable (rows that are not hold junk).

    All at once when every bbox is four numbers (numpy's conversion of a number to float64 is float()'s, and
    the checks and sums are the same elementwise); otherwise box by box through _corners.
    """
    try:
        boxes = np.asarray([annotation["bbox"] for annotation in annotations], dtype=np.float64)
    except (KeyError, TypeError, ValueError, OverflowError):
        boxes = None
    if boxes is None or boxes.shape != (len(annotations), 4):
        corners = [_corners(annotation) for annotation in annotations]
        readable = np.asarray([c is not None for c in corners], dtype=bool)
        return np.asarray([c or [0.0] * 4 for c in corners], dtype=np.float64).reshape(-1, 4), readable
    x, y, w, h = boxes.T
    readable = np.isfinite(boxes).all(axis=1) & (w > 0) & (h > 0)
    return np.stack([x, y, x + w, y + h], axis=1), readable


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    height, width = image.shape[:2]
    own = _corners(obj)
    if own is None:
        return None
    box = np.asarray(own)
    box[[0, 2]] = np.clip(box[[0, 2]], 0, width)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, height)
    step = max(1, math.ceil(max(height, width) / _SAMPLES))
    if min(box[2] - box[0], box[3] - box[1]) < 2 * step:
        return None
    grid = image[::step, ::step]
    rows, columns = grid.shape[:2]

    annotations = scene["annotations"]
    corners, readable = _all_corners(annotations)
    own_id, own_category = obj.get("id"), obj.get("category_id")
    kept = readable & np.asarray([other.get("id") != own_id for other in annotations], dtype=bool)
    if not kept.any():
        return None
    others_array = corners[kept]
    same_array = np.asarray([other.get("category_id") == own_category for other in annotations], dtype=bool)[kept]
    # The grid cells under other boxes, and their summed-area table (cv2.integral of 0/1 bytes: exact).
    others_cells = _cells(others_array, step, rows, columns)
    covered = np.zeros((rows, columns), dtype=np.uint8)
    for top, left, bottom, right in others_cells.tolist():
        covered[top:bottom, left:right] = 1
    cover_table = cv2.integral(covered)

    # Box-sized windows over the whole image, in steps of half the box.
    size_y = max(2, round((box[3] - box[1]) / step))
    size_x = max(2, round((box[2] - box[0]) / step))
    tops = np.arange(0, max(rows - size_y, 0) + 1, max(1, size_y // 2, rows // _LATTICE))
    lefts = np.arange(0, max(columns - size_x, 0) + 1, max(1, size_x // 2, columns // _LATTICE))
    top, left = (a.ravel() for a in np.meshgrid(tops, lefts, indexing="ij"))
    windows = np.stack([top, left, np.minimum(top + size_y, rows), np.minimum(left + size_x, columns)], axis=1)
    area = (windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1])
    cover = (
        cover_table[windows[:, 2], windows[:, 3]]
        - cover_table[windows[:, 0], windows[:, 3]]
        - cover_table[windows[:, 2], windows[:, 1]]
        + cover_table[windows[:, 0], windows[:, 1]]
    ) / area.astype(np.float64)
    window_corners = windows[:, [1, 0, 3, 2]].astype(np.float64) * step
    background = (cover <= _MAX_COVER) & (_iou(box, window_corners) <= _MAX_SELF_IOU)
    if not background.any():
        return None

    apart = _iou(box, others_array) <= _MAX_TWIN_IOU
    kin = same_array & apart
    if not kin.any():
        kin = apart
        if not kin.any():
            return None
    # One description for the windows, the box and its kin (row by row, so the same as three).
    described = np.concatenate([windows, _cells(box[None, :], step, rows, columns), others_cells[kin]])
    features = _describe(_tables(grid), described)
    window_features = features[: len(windows)]
    scale = window_features.std(axis=0) + 1e-6
    own_features = features[len(windows)] / scale
    background_features = window_features[background] / scale
    kin_features = features[len(windows) + 1 :] / scale

    def nearest(features: np.ndarray) -> float:
        distances = np.sort(np.linalg.norm(features - own_features, axis=1))
        return float(distances[:_NEAREST].mean())

    to_background, to_class = nearest(background_features), nearest(kin_features)
    if to_background + to_class <= 1e-12:
        return 0.5  # identical to both: no evidence either way
    return to_class / (to_class + to_background)
