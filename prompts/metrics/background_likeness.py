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
_PLANES = 7  # lightness, red-green, yellow-blue, their squares, roughness


def _table(grid: np.ndarray) -> np.ndarray:
    """Summed-area table of the planes behind the description, stacked: (planes * rows + 1, columns + 1).

    Stacked one under the other, so that one cv2.integral call makes it. Whole numbers (each feature
    is rescaled by its spread later, so the planes' units don't matter): the planes, all below 2**24,
    are exact in float32, and their sums, all below 2**53, in float64; so every sum and difference of
    sums is exact, the same on every machine and in any order.
    """
    red, green, blue = np.moveaxis(grid, -1, 0).copy().astype(np.float32)  # gathering bytes first is cheaper
    rows, columns = grid.shape[:2]
    planes = np.empty((_PLANES, rows, columns), dtype=np.float32)
    lightness = np.add(red, green, out=planes[0])
    lightness += blue
    np.subtract(red, green, out=planes[1])
    np.subtract(lightness, 3 * blue, out=planes[2])
    np.square(planes[:3], out=planes[3:6])
    rough = planes[6]
    np.abs(lightness[:, 1:] - lightness[:, :-1], out=rough[:, :-1])
    rough[:, -1] = 0
    rough[:-1, :] += np.abs(lightness[1:, :] - lightness[:-1, :])
    return cv2.integral(planes.reshape(_PLANES * rows, columns), sdepth=cv2.CV_64F)


def _plane_views(table: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The stacked table as two (planes, rows, columns + 1) views: at each cell's top edge, and at its bottom edge.

    Plane p's sum over cells [top, bottom) x [left, right) is at_bottom[p, bottom - 1, right]
    - at_top[p, top, right] - at_bottom[p, bottom - 1, left] + at_top[p, top, left]: what the planes
    stacked above it add cancels out.
    """
    return table[:-1].reshape(_PLANES, rows, -1), table[1:].reshape(_PLANES, rows, -1)


def _cells(corners: list[float], step: int, rows: int, columns: int) -> tuple[int, int, int, int]:
    """A box [x0, y0, x1, y1] in pixels as [top, left, bottom, right) grid cells, at least one cell each way."""
    top = min(max(math.floor(corners[1] / step), 0), rows - 1)
    left = min(max(math.floor(corners[0] / step), 0), columns - 1)
    bottom = min(max(math.ceil(corners[3] / step), top + 1), rows)
    right = min(max(math.ceil(corners[2] / step), left + 1), columns)
    return top, left, bottom, right


def _corners(annotation: dict) -> list[float] | None:
    try:
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return [x, y, x + w, y + h]


def prepare(image: np.ndarray, scene: dict) -> dict:
    """What every box of the image shares: the grid's summed-area table, the boxes with their plane sums, the cover."""
    height, width = image.shape[:2]
    step = max(1, math.ceil(max(height, width) / _SAMPLES))
    grid = image[::step, ::step]
    rows, columns = grid.shape[:2]
    ids, categories, corners, cells = [], [], [], []
    for annotation in scene["annotations"]:
        box = _corners(annotation)
        if box is not None:
            ids.append(annotation.get("id"))
            categories.append(annotation.get("category_id"))
            corners.append(box)
            cells.append(_cells(box, step, rows, columns))
    counts = np.zeros((rows, columns), dtype=np.int32)
    for top, left, bottom, right in cells:
        counts[top:bottom, left:right] += 1
    table = _table(grid)
    at_top, at_bottom = _plane_views(table, rows)
    top, left, bottom, right = np.asarray(cells, dtype=np.intp).reshape(-1, 4).T
    sums = at_bottom[:, bottom - 1, right] - at_top[:, top, right] - at_bottom[:, bottom - 1, left]
    sums += at_top[:, top, left]
    corners_array = np.asarray(corners, dtype=np.float64).reshape(-1, 4).T  # x0, y0, x1, y1 rows
    return {
        "step": step,
        "rows": rows,
        "table": table,
        # The boxes that have corners, in the scene's order.
        "ids": ids,
        "categories": categories,
        "corners": corners_array,
        "areas": (corners_array[2] - corners_array[0]) * (corners_array[3] - corners_array[1]),
        "sums": sums,  # (planes, boxes)
        "cell_counts": (bottom - top) * (right - left),
        # Within a box's own cells, the cells other boxes cover are those covered twice.
        "covered": (counts > 0).view(np.uint8),
        "covered_twice": (counts > 1).view(np.uint8),
    }


def _lattice(size: int, extent: int) -> tuple[np.ndarray, slice, slice]:
    """Windows of `size` cells along an axis of `extent`: their starts, and the starts and the ends as slices."""
    stride = max(1, size // 2, extent // _LATTICE)
    starts = np.arange(0, max(extent - size, 0) + 1, stride)
    last = starts[-1]
    size = min(size, extent)  # a window larger than the image is the whole image
    return starts, slice(0, last + 1, stride), slice(size, last + size + 1, stride)


def score(image: np.ndarray, obj: dict, scene: dict, prepared: dict) -> float | None:
    height, width = image.shape[:2]
    own = _corners(obj)
    if own is None:
        return None
    box = [min(max(own[0], 0.0), width), min(max(own[1], 0.0), height)]
    box += [min(max(own[2], 0.0), width), min(max(own[3], 0.0), height)]
    step = prepared["step"]
    if min(box[2] - box[0], box[3] - box[1]) < 2 * step:
        return None
    table, rows = prepared["table"], prepared["rows"]
    columns = table.shape[1] - 1

    own_id, own_category = obj.get("id"), obj.get("category_id")
    others = [k for k, other_id in enumerate(prepared["ids"]) if other_id != own_id]
    if not others:
        return None
    # Clipping the box to the image moves none of its cells (the grid ends with the image).
    top, left, bottom, right = _cells(box, step, rows, columns)
    # The cells other boxes cover: those covered at all, and within this box those covered twice.
    covered = prepared["covered"].copy()
    covered[top:bottom, left:right] = prepared["covered_twice"][top:bottom, left:right]
    cover_table = cv2.integral(covered)

    # Box-sized windows over the whole image, in steps of half the box: a lattice of tops and lefts.
    size_y = max(2, round((box[3] - box[1]) / step))
    size_x = max(2, round((box[2] - box[0]) / step))
    tops, top_rows, bottom_rows = _lattice(size_y, rows)
    lefts, left_columns, right_columns = _lattice(size_x, columns)
    size_y, size_x = min(size_y, rows), min(size_x, columns)
    area = size_y * size_x
    strips = cover_table[bottom_rows] - cover_table[top_rows]
    cover = (strips[:, right_columns] - strips[:, left_columns]).ravel() / area
    ix = np.maximum(np.minimum(box[2], (lefts + size_x) * step) - np.maximum(box[0], lefts * step), 0)
    iy = np.maximum(np.minimum(box[3], (tops + size_y) * step) - np.maximum(box[1], tops * step), 0)
    inter = np.multiply.outer(iy, ix).ravel()
    union = (box[2] - box[0]) * (box[3] - box[1]) + area * step * step - inter
    background = (cover <= _MAX_COVER) & (inter / np.maximum(union, 1e-12) <= _MAX_SELF_IOU)
    if not background.any():
        return None

    corners = prepared["corners"][:, others]
    inter = np.maximum(np.minimum(box[2], corners[2]) - np.maximum(box[0], corners[0]), 0)
    inter *= np.maximum(np.minimum(box[3], corners[3]) - np.maximum(box[1], corners[1]), 0)
    union = (box[2] - box[0]) * (box[3] - box[1]) + prepared["areas"][others] - inter
    twin = inter / np.maximum(union, 1e-12) <= _MAX_TWIN_IOU
    categories = prepared["categories"]
    kin = np.asarray([categories[k] == own_category for k in others]) & twin
    if not kin.any():
        kin = twin
        if not kin.any():
            return None
    kin = np.asarray(others)[kin]

    # Plane sums (planes along axis 0) of this box, then its kin, then every window, and their means.
    at_top, at_bottom = _plane_views(table, rows)
    count = 1 + len(kin)
    means = np.empty((_PLANES, count + len(cover)))
    means[:, 0] = at_bottom[:, bottom - 1, right] - at_top[:, top, right] - at_bottom[:, bottom - 1, left]
    means[:, 0] += at_top[:, top, left]
    means[:, 0] /= (bottom - top) * (right - left)
    np.divide(prepared["sums"][:, kin], prepared["cell_counts"][kin], out=means[:, 1:count])
    strips = at_bottom[:, bottom_rows.start - 1 : bottom_rows.stop - 1 : bottom_rows.step] - at_top[:, top_rows]
    windows = means[:, count:]
    np.subtract(strips[:, :, right_columns], strips[:, :, left_columns], out=windows.reshape(_PLANES, len(tops), -1))
    windows /= area
    spread = means[3:6]
    spread -= means[:3] ** 2
    np.maximum(spread, 0, out=spread)
    np.sqrt(spread, out=spread)

    # Each feature's spread over the windows, as numpy's std(axis=0) of the windows' rows sums it: row after row.
    by_row = windows.T.copy()
    deviation = by_row - np.add.reduce(by_row, axis=0) / len(by_row)
    np.square(deviation, out=deviation)
    means /= (np.sqrt(np.add.reduce(deviation, axis=0) / len(by_row)) + 1e-6)[:, None]
    # Distances from this box: the squared feature differences, added in the features' order.
    difference = means - means[:, :1]
    difference *= difference
    distances = np.sqrt(np.add.reduce(difference, axis=0))

    def nearest(distances: np.ndarray) -> float:
        if len(distances) > _NEAREST:
            distances = np.partition(distances, _NEAREST - 1)[:_NEAREST]
        closest = sorted(distances.tolist())
        return sum(closest) / len(closest)

    to_background, to_class = nearest(distances[count:][background]), nearest(distances[1:count])
    if to_background + to_class <= 1e-12:
        return 0.5  # identical to both: no evidence either way
    return to_class / (to_class + to_background)
