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

High is suspicious. The image is read on a grid of at most about 64 samples along its longer
side (every pixel of a small image), so the cost is the same for any box; the grid's tables are
made once per image (`prepare`). None for a box under 2
samples either way or outside the image, when the image has no other box, or no background window.
"""

import math

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


def _tables(grid: np.ndarray) -> np.ndarray:
    """Summed-area tables of the planes behind the description: (planes, rows + 1, columns + 1).

    Whole numbers (each feature is rescaled by its spread later, so the planes' units don't matter):
    integer sums are exact, the same on every machine, and numpy accumulates them several times
    faster than floats. Planes first, so that each cumulative sum runs along long contiguous rows.
    """
    red, green, blue = np.moveaxis(grid, -1, 0).astype(np.int64)
    lightness = red + green + blue
    colours = np.stack([lightness, red - green, red + green - 2 * blue])
    rough = np.zeros_like(lightness)
    rough[:, :-1] += np.abs(np.diff(lightness, axis=1))
    rough[:-1, :] += np.abs(np.diff(lightness, axis=0))
    planes = np.concatenate([colours, colours * colours, rough[None]])
    table = np.zeros((planes.shape[0], planes.shape[1] + 1, planes.shape[2] + 1), dtype=np.int64)
    table[:, 1:, 1:] = planes.cumsum(axis=1).cumsum(axis=2)
    return table


def _describe(table: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per box [top, left, bottom, right) in grid cells: mean colours, their spreads and the roughness."""
    top, left, bottom, right = (boxes[:, k] for k in range(4))
    sums = table[:, bottom, right] - table[:, top, right] - table[:, bottom, left] + table[:, top, left]
    means = (sums.astype(np.float64) / np.maximum((bottom - top) * (right - left), 1)).T
    spread = np.sqrt(np.clip(means[:, 3:6] - means[:, :3] ** 2, 0, None))
    return np.concatenate([means[:, :3], spread, means[:, 6:7]], axis=1)


def _cells(corners: np.ndarray, step: float, rows: int, columns: int) -> np.ndarray:
    """Boxes [x0, y0, x1, y1] in pixels as [top, left, bottom, right) grid cells, at least one cell each way."""
    top = np.clip(np.floor(corners[:, 1] / step), 0, rows - 1).astype(np.int64)
    left = np.clip(np.floor(corners[:, 0] / step), 0, columns - 1).astype(np.int64)
    bottom = np.clip(np.ceil(corners[:, 3] / step), top + 1, rows).astype(np.int64)
    right = np.clip(np.ceil(corners[:, 2] / step), left + 1, columns).astype(np.int64)
    return np.stack([top, left, bottom, right], axis=1)


def _corners(annotation: dict) -> list[float] | None:
    try:
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return [x, y, x + w, y + h]


def prepare(image: np.ndarray, scene: dict) -> dict:
    """What every box of the image shares: the grid's summed-area tables, and how many boxes cover each cell."""
    height, width = image.shape[:2]
    step = max(1, math.ceil(max(height, width) / _SAMPLES))
    grid = image[::step, ::step]
    rows, columns = grid.shape[:2]
    corners = [c for c in (_corners(annotation) for annotation in scene["annotations"]) if c is not None]
    boxes = np.zeros((rows, columns), dtype=np.int64)
    if corners:
        for top, left, bottom, right in _cells(np.asarray(corners), step, rows, columns):
            boxes[top:bottom, left:right] += 1
    return {"step": step, "table": _tables(grid), "boxes": boxes}


def score(image: np.ndarray, obj: dict, scene: dict, prepared: dict) -> float | None:
    height, width = image.shape[:2]
    own = _corners(obj)
    if own is None:
        return None
    box = np.asarray(own)
    box[[0, 2]] = np.clip(box[[0, 2]], 0, width)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, height)
    step = prepared["step"]
    if min(box[2] - box[0], box[3] - box[1]) < 2 * step:
        return None
    table = prepared["table"]
    rows, columns = table.shape[1] - 1, table.shape[2] - 1

    others, same = [], []
    for other in scene["annotations"]:
        corners = _corners(other)
        if other.get("id") == obj.get("id") or corners is None:
            continue
        others.append(corners)
        same.append(other.get("category_id") == obj.get("category_id"))
    if not others:
        return None
    others_array, same_array = np.asarray(others), np.asarray(same)
    # The cells other boxes cover: every box's count there, less this box's own.
    covered = prepared["boxes"].copy()
    top, left, bottom, right = _cells(np.asarray([own]), step, rows, columns)[0]
    covered[top:bottom, left:right] -= 1
    covered = (covered > 0).astype(np.int64)
    cover_table = np.zeros((rows + 1, columns + 1), dtype=np.int64)
    cover_table[1:, 1:] = covered.cumsum(axis=0).cumsum(axis=1)

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

    kin = same_array & (_iou(box, others_array) <= _MAX_TWIN_IOU)
    if not kin.any():
        kin = _iou(box, others_array) <= _MAX_TWIN_IOU
        if not kin.any():
            return None
    window_features = _describe(table, windows)
    scale = window_features.std(axis=0) + 1e-6
    own_features = _describe(table, _cells(box[None, :], step, rows, columns))[0] / scale
    background_features = window_features[background] / scale
    kin_features = _describe(table, _cells(others_array[kin], step, rows, columns)) / scale

    def nearest(features: np.ndarray) -> float:
        distances = np.sort(np.linalg.norm(features - own_features, axis=1))
        return float(distances[:_NEAREST].mean())

    to_background, to_class = nearest(background_features), nearest(kin_features)
    if to_background + to_class <= 1e-12:
        return 0.5  # identical to both: no evidence either way
    return to_class / (to_class + to_background)
