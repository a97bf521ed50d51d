"""Learned label-error detectors: how likely the box is a label error of each type, by models trained on this dataset.

A feature metric with `COMBINE = "learned"`: score() only describes the box, and metricsmith learns
what a wrong box looks like from the dataset itself. For each type in ERRORS it corrupts copies of
the dataset's own boxes the way `metricsmith inject` does (shifted, loose, tight, spurious,
duplicated or swapped boxes, on fresh seeds), describes each corrupted box with this vector, and
trains a gradient-boosted classifier to tell them from the dataset's boxes. Each box's score is the
probability the classifier gives it: one metric per type, `learned_shift`, `learned_loose`, ... The
model that scores an image's boxes never saw that image: the images are split into folds, and each
fold is scored by a model trained on the others. The target is never a box's real label, only the
corruptions metricsmith made, so a model cannot learn the errors the dataset really has; it learns
what its boxes look like when they are made wrong in these ways.

The vector describes the box by what sits at and around its edges, on a grid of cells: the box
plus a margin of half its size on each side, sampled at 64 x 64 points, the box covering the middle
32 x 32 (exact arithmetic on the pixels, the same on every machine). Colours are opponent channels
of those cells: lightness (R+G+B)/3, red-green R-G and yellow-blue (R+G)/2-B.

  - Profiles across each side: for 7 bands parallel to the side, from 8 cells inside the box to 8
    cells outside, the band's mean lightness, red-green, yellow-blue, share covered by other boxes,
    and gradient across the side. The four sides are sorted by the gradient at the edge itself, so
    a box shifted left looks like one shifted right.
  - Inside against outside: the colour difference between the box's inner band and the ring just
    outside it, and between its centre and the ring; colour spread and the share of strong edges in each.
  - Fit against its neighbours on the grid: how much better the same fit (band-to-ring contrast,
    gradient in the band) gets for the box moved by up to a quarter of its size, grown, or shrunk.
  - Against the image: the distance of the box's mean colour from the image's other boxes and from
    the image outside every box (a spurious box on background looks like background).
  - Geometry: log aspect, log area over the image's, the share of the box outside the image, the
    highest IoU with another box and with another box of the same class, the distance to the
    nearest other box in box sizes, and how many boxes the image holds. metricsmith adds the class.
"""

import math

import cv2
import numpy as np

NAME = "learned"
TITLE = "Learned label-error detector"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, 1.0)
TAGS = ["learned", "geometry", "appearance"]
OUTPUT = "features"
COMBINE = "learned"
ERRORS = ["swap", "shift", "loose", "tight", "spurious", "duplicate"]

_CELLS = 64  # the region is sampled at this many points each way
_MARGIN = 0.5  # the region is the box grown by this share of its size on each side
_BOX0, _BOX1 = 16, 48  # where the box sits in the cell grid: _CELLS * _MARGIN / (1 + 2 * _MARGIN)
_OFFSETS = (-8, -4, -2, 0, 2, 4, 8)  # band positions across a side, in cells; negative is inside
_IMAGE_CELLS = 48  # the whole image is sampled at this many points each way, for image colours
_STRONG_EDGE = 24.0  # a gradient this large (grey levels per cell) counts as a strong edge


# The grid's geometry is the same for every box, so its index arrays and masks are built once, here, as
# module constants (nothing passes from one call to the next).

# Where each cell centre sits across the region, in box sizes from the box's top-left corner.
_STEPS = (np.arange(_CELLS) + 0.5) / _CELLS * (1 + 2 * _MARGIN) - _MARGIN
_IMAGE_STEPS = np.arange(_IMAGE_CELLS) + 0.5  # where the image's cell centres sit, in cells

# The box's planes, in this order: the three opponent colours, the share covered by other boxes, the gradient
# across columns (for the left and right sides) and across rows (top and bottom), and the gradient magnitude.
_LIGHTNESS, _RED_GREEN, _YELLOW_BLUE, _COVERED, _ACROSS_COLUMNS, _ACROSS_ROWS, _MAGNITUDE = range(7)

# The opponent colours as one linear map of R, G, B: 3 x lightness, red-green and yellow-blue. On whole
# numbers up to 255 every product and sum in it is exact, so these are the values that adding and subtracting
# step by step gives; lightness is then divided by 3, as it always was.
_OPPONENT = np.asarray([(1.0, 1.0, 1.0), (1.0, -1.0, 0.0), (0.5, 0.5, -1.0)])

# All of a box's planes live in one flat array (the grid), so that one take reads any set of its cells: first
# the colours, (_STORED, _STORED, 3) with the colour innermost, then a plane each, (_STORED, _STORED), for the
# lightness again, the cover, the two gradients across and the gradient magnitude, then a zero that pads reads
# to a common length. Every plane is transposed, (column, row): the layout in which cv2.integral adds up the
# cells in _fit_profile's order. Nothing reads the grid's last rows and columns (the fit's outer boxes reach
# furthest, to _STORED: asserted below), so they are never sampled.
_STORED = 59
_PLANE = _STORED * _STORED
_PLANE_AT = {_LIGHTNESS: 0, _COVERED: 1, _ACROSS_COLUMNS: 2, _ACROSS_ROWS: 3, _MAGNITUDE: 4}  # after the colours
_GRID_SIZE = 8 * _PLANE + 1
_ZERO = _GRID_SIZE - 1


def _at(plane: int, row: np.ndarray, column: np.ndarray) -> np.ndarray:
    """Where the grid holds `plane` at the cells (row, column), in the flat array (a colour: in the colours).

    Only for cells short of the grid's last row and column: a gradient there would need the cell past it.
    """
    assert np.max(row) < _STORED - 1 and np.max(column) < _STORED - 1
    if plane < _COVERED:
        return (column * _STORED + row) * 3 + plane
    return (3 + _PLANE_AT[plane]) * _PLANE + column * _STORED + row


def _planes(grid: np.ndarray) -> np.ndarray:
    """The grid's planes after the colours, transposed: (plane, column, row), in the order of _PLANE_AT."""
    return grid[3 * _PLANE : 8 * _PLANE].reshape(len(_PLANE_AT), _STORED, _STORED)


def _strip_index() -> np.ndarray:
    """Flat indices into the grid of every band of the side profiles, one band a row.

    Rows run by side (left, right, top, bottom), then plane (the three colours, the cover, the gradient across
    that side), then band (the _OFFSETS, inside to outside); each row holds the band's 32 cells along the side.
    """
    along = np.arange(_BOX0, _BOX1)
    rows = []
    for gradient, band_at, runs_along_rows in (
        (_ACROSS_COLUMNS, lambda offset: _BOX0 - 1 - offset, True),  # left edge: outside is the lower index
        (_ACROSS_COLUMNS, lambda offset: _BOX1 + offset, True),  # right edge
        (_ACROSS_ROWS, lambda offset: _BOX0 - 1 - offset, False),  # top edge
        (_ACROSS_ROWS, lambda offset: _BOX1 + offset, False),  # bottom edge
    ):
        for plane in (_LIGHTNESS, _RED_GREEN, _YELLOW_BLUE, _COVERED, gradient):
            for offset in _OFFSETS:
                band = np.full_like(along, min(max(band_at(offset), 0), _CELLS - 1))
                rows.append(_at(plane, along, band) if runs_along_rows else _at(plane, band, along))
    return np.asarray(rows)


_STRIPS = _strip_index()
_EDGE = len(_OFFSETS) * 4 + _OFFSETS.index(0)  # in a side's profile: the gradient at the edge itself


def _region(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((_CELLS, _CELLS), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _region_index() -> list[tuple[np.ndarray, np.ndarray]]:
    """Where score() reads the colours of the box and of the ring just outside it, and of the box's inner
    band and of its centre: per pair, (the larger region's cells, 2 regions x 3 colours), each region's cells
    in row-major order down its three columns, then the grid's zero to the larger's length; and each column's
    count of cells.
    """
    inner = _region(_BOX0, _BOX0, _BOX1, _BOX1)  # the box
    core = _region(_BOX0 + 8, _BOX0 + 8, _BOX1 - 8, _BOX1 - 8)  # its centre
    ring = _region(_BOX0 - 6, _BOX0 - 6, _BOX1 + 6, _BOX1 + 6) & ~inner  # the ring just outside it
    pairs = []
    for regions in ((inner, ring), (inner & ~core, core)):  # inner & ~core: the band along the box's edges
        cells = [np.flatnonzero(region) for region in regions]
        index = np.full((max(map(len, cells)), 3 * len(regions)), _ZERO)
        for at, region in enumerate(cells):
            for colour in range(3):
                index[: len(region), 3 * at + colour] = _at(colour, region // _CELLS, region % _CELLS)
        pairs.append((index, np.repeat([float(len(region)) for region in cells], 3)))
    return pairs


(_BOX_RING, _BOX_RING_CELLS), (_BAND_CORE, _BAND_CORE_CELLS) = _region_index()
_RING_CELLS = int(_BOX_RING_CELLS[3])
_REPEATED_MEANS = np.tile(np.arange(_BOX_RING.shape[1]), 8)  # the box's and ring's means, for 8 cells in a row
_READ = np.concatenate([_STRIPS.ravel(), _BOX_RING.ravel(), _BAND_CORE.ravel()])  # all score() reads, in one take


def _fit_rectangles() -> tuple[list[tuple[int, int, int]], np.ndarray, np.ndarray, np.ndarray]:
    """_fit_profile's candidates, and where it reads the summed-area table for each.

    The candidates: the box moved by (dy, dx) cells, then grown, then shrunk by d cells. For each, three
    rectangles [top, left, bottom, right), clipped to the grid: the candidate's core (a band in from each
    side), the candidate, and its outer box (a band out), all the cores first, then the candidates, then the
    outer boxes. Returns the candidates, the rows and the columns of the four corners read per rectangle
    (bottom-right, top-right, bottom-left, top-left: (4, rectangles) each), and the cells in each candidate's
    inner band and then in its ring (at least 1), (2, candidates, 1), as floats to divide by.
    """
    steps = (-8, -4, 0, 4, 8)
    candidates = [(dy, dx, 0) for dy in steps for dx in steps]  # moved by (dy, dx) cells
    candidates += [(0, 0, d) for d in (2, 4, 8)] + [(0, 0, -d) for d in (2, 4, 8)]  # grown, shrunk by d
    boxes = np.asarray([(_BOX0 + dy - d, _BOX0 + dx - d, _BOX1 + dy + d, _BOX1 + dx + d) for dy, dx, d in candidates])
    band = 3
    shrink = np.asarray([band, band, -band, -band])
    top, left, bottom, right = np.clip(np.concatenate([boxes + shrink, boxes, boxes - shrink]), 0, _CELLS).T
    core, whole, outer = np.maximum((bottom - top) * (right - left), 0).reshape(3, -1)
    rows = np.stack([bottom, top, bottom, top])
    columns = np.stack([right, right, left, left])
    cells = np.maximum(np.stack([whole - core, outer - whole]), 1).astype(np.float64)
    return candidates, rows, columns, cells[..., None]


_CANDIDATES, _FIT_ROWS, _FIT_COLUMNS, _FIT_CELLS = _fit_rectangles()
_HERE = _CANDIDATES.index((0, 0, 0))
_FIT_INNER = slice(0, 2 * len(_CANDIDATES))  # the rectangles whose gradient is read: cores and candidates
# A summed-area table's entry [i, j] adds up the cells before column i and row j only, so the tables are made
# only as far as they are read (_FIT_EXTENT for the colours, _MAGNITUDE_EXTENT for the gradient magnitude),
# and the magnitude, read by nothing else past that but the strong edges, is computed only that far.
_FIT_EXTENT = int(max(_FIT_ROWS.max(), _FIT_COLUMNS.max()))
_MAGNITUDE_EXTENT = int(max(_FIT_ROWS[:, _FIT_INNER].max(), _FIT_COLUMNS[:, _FIT_INNER].max()))
assert _MAGNITUDE_EXTENT >= _BOX1 + 6  # the ring whose strong edges are counted
# The grid stops at the fit's reach; the magnitude, like every cell _at gives, short of its last cell.
assert _FIT_EXTENT == _STORED and _MAGNITUDE_EXTENT < _STORED - 1


def _fit_index() -> tuple[int, np.ndarray]:
    """The size of the flat array that holds _fit_profile's two summed-area tables, and where it reads them.

    The colours' table first, (_FIT_EXTENT + 1, _FIT_EXTENT + 1, 3), then the gradient magnitude's, then a
    zero. The index is (4 corners, rectangles, 3 colours and the magnitude); the outer boxes' magnitude,
    never used, reads the zero.
    """
    colours = (_FIT_EXTENT + 1) ** 2 * 3
    magnitude = (_MAGNITUDE_EXTENT + 1) ** 2
    index = np.empty((*_FIT_ROWS.shape, 4), dtype=np.int64)
    index[..., :3] = ((_FIT_COLUMNS * (_FIT_EXTENT + 1) + _FIT_ROWS) * 3)[..., None] + np.arange(3)
    index[..., 3] = colours + _FIT_COLUMNS * (_MAGNITUDE_EXTENT + 1) + _FIT_ROWS
    index[:, _FIT_INNER.stop :, 3] = colours + magnitude
    return colours + magnitude + 1, index


_FIT_TABLES, _FIT_CORNERS = _fit_index()


def _grid(image: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The grid (see _GRID_SIZE) with its colours and gradients: the box grown by _MARGIN of its size on each
    side, sampled at the centres of _CELLS x _CELLS cells, at `centres` (their y, their x) in the image.

    Sampling, not averaging: averaging each cell costs more than everything else the metric does, and the
    bands below average 32 cells each anyway. Cells past the image edge repeat its edge pixels; the
    geometry features say how much of the box is out. The cover is left to the caller.
    """
    grid = np.empty(_GRID_SIZE)
    grid[_ZERO] = 0.0
    colours = grid[: 3 * _PLANE].reshape(_STORED, _STORED, 3)
    cv2.transform(_sample(image, centres).astype(np.float64), _OPPONENT, dst=colours)
    planes = _planes(grid)
    lightness = planes[_PLANE_AT[_LIGHTNESS]]
    np.divide(colours[..., _LIGHTNESS], 3.0, out=lightness)
    colours[..., _LIGHTNESS] = lightness
    # |np.gradient|: central differences over 2 inside, one-sided differences at the two ends (both ends at
    # once: every (_STORED - 2)th cell less the one before it); at the grid's far end, where the grid stops
    # short, that difference is never read. (b - a) / 2 is b / 2 - a / 2, bit for bit: halving is exact, and
    # rounding a difference commutes with it. Transposed, across columns runs down the first axis and across
    # rows along the second. Across rows, the central differences are taken along the flat plane, as one
    # run: those that straddle two columns land on the ends, which are written after them.
    across_columns, across_rows = planes[_PLANE_AT[_ACROSS_COLUMNS]], planes[_PLANE_AT[_ACROSS_ROWS]]
    ends = slice(None, None, _STORED - 1)
    half = lightness / 2.0
    np.subtract(half[2:], half[:-2], out=across_columns[1:-1])
    np.subtract(lightness[1 :: _STORED - 2], lightness[:: _STORED - 2], out=across_columns[ends])
    flat_half, flat_across = half.reshape(-1), across_rows.reshape(-1)
    np.subtract(flat_half[2:], flat_half[:-2], out=flat_across[1:-1])
    np.subtract(lightness[:, 1 :: _STORED - 2], lightness[:, :: _STORED - 2], out=across_rows[:, ends])
    across = planes[_PLANE_AT[_ACROSS_COLUMNS] : _PLANE_AT[_ACROSS_ROWS] + 1]  # the two, adjacent
    np.abs(across, out=across)
    extent = slice(0, _MAGNITUDE_EXTENT)
    magnitude = planes[_PLANE_AT[_MAGNITUDE], extent, extent]
    # np.hypot is symmetric (C's hypot(x, y) is hypot(y, x)); given the larger first, its branches go the same
    # way cell after cell, and it costs a fifth less.
    larger = np.maximum(across_rows[extent, extent], across_columns[extent, extent])
    np.hypot(larger, np.minimum(across_rows[extent, extent], across_columns[extent, extent]), out=magnitude)
    return grid


def _sample(image: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The image's pixels at `centres` (y, x), transposed: (columns, rows, 3), rows and columns past the
    image clipped to its edge. Clipping first and then truncating towards zero gives what flooring first and
    then clipping gave (the bounds are whole numbers).
    """
    height, width = image.shape[:2]
    rows, columns = np.minimum(np.maximum(centres[:, :_STORED], 0.0), ((height - 1,), (width - 1,))).astype(np.int64)
    # The columns ascend: the rows are copied only from the first to the last (not whole, on a wide image),
    # then the columns taken from that.
    first = int(columns[0])
    return cv2.transpose(image[rows, first : int(columns[-1]) + 1].take(columns - first, axis=1))


def _sums(cells: np.ndarray) -> np.ndarray:
    """Per column, the sum of (n, k) cells, added one cell after another from the first.

    That is the order of numpy's sum over axis 0 (a running total per column, row by row), and of OpenCV's
    reduction of a floating-point matrix to one row (a plain loop, first row copied, each next row added),
    which costs a fifth as much on narrow rows.
    """
    return cv2.reduce(cells, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F)[0]


def _colour_sums(colours: np.ndarray) -> tuple[float, float, float]:
    """Per colour, the sum of the (..., 3) `colours`, cell after cell in row-major order from 0: _sums' order.

    cv2.sumElems adds up a floating-point matrix of three channels in a plain loop (vector code only for
    one, two or four channels), from a zero total, row after row; no colour is -0.0, so 0 + the first cell is
    that cell. It costs a third as much as cv2.reduce on three-wide rows.
    """
    return cv2.sumElems(colours)[:3]


def _corners(annotation: dict) -> tuple[float, float, float, float] | None:
    x, y, w, h = (float(v) for v in annotation["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h


def _all_boxes(annotations: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """The corners of every readable box (n, 4), and which of the annotations they are: all boxes at once,
    when every bbox is four numbers (None otherwise).

    numpy's conversion of a number to float64 is float()'s, and the checks and the sums are _corners',
    elementwise. A scene with any other bbox is read box by box (_boxes_one_by_one), so that a malformed box
    fails (or is skipped) exactly as it always did.
    """
    try:
        boxes = np.asarray([annotation["bbox"] for annotation in annotations], dtype=np.float64)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if boxes.shape != (len(annotations), 4):
        return None
    readable = np.logical_and.reduce(np.isfinite(boxes), axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    boxes[:, 2:] += boxes[:, :2]  # x + w, y + h
    return boxes[readable], readable


def _boxes_one_by_one(obj: dict, scene: dict) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """For a scene with a box that is not four numbers: the corners of every readable box (n, 4), which of
    them are other boxes than `obj`, and those other boxes' annotations (in the scene's order throughout).
    Each box is read by _corners."""
    corners, other, annotations = [], [], []
    for annotation in scene["annotations"]:
        box = _corners(annotation)
        is_other = annotation["id"] != obj["id"]  # read for every box, readable or not, as it always was
        if box is not None:
            corners.append(box)
            other.append(is_other)
            if is_other:
                annotations.append(annotation)
    return np.asarray(corners, dtype=np.float64).reshape(-1, 4), np.asarray(other, dtype=bool), annotations


def _spans(centre_y: np.ndarray, centre_x: np.ndarray, corners: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Per box (`corners`, (n, 4)), the cells whose centre lies in it, [x0, x1) x [y0, y1): [top, bottom) x
    [left, right), in cells of a grid whose centres are `centre_y` down and `centre_x` across.

    The centres ascend, so the cells in a box run together along each axis: from the first centre at or past
    its low edge to the first at or past its high edge (np.searchsorted, for all boxes at once): the cells that
    the centre-by-centre comparisons select.
    """
    rows = centre_y.searchsorted(corners[:, 1::2]).tolist()
    columns = centre_x.searchsorted(corners[:, ::2]).tolist()
    return [(top, bottom, left, right) for (top, bottom), (left, right) in zip(rows, columns, strict=True)]


def _mark(mask: np.ndarray, corners: np.ndarray, centre_y: np.ndarray, centre_x: np.ndarray) -> None:
    """Sets the cells of `mask` whose centre lies in any of the boxes (_spans), one slice assignment a box."""
    for top, bottom, left, right in _spans(centre_y, centre_x, corners):
        if top < bottom and left < right:  # most boxes of a crowded image miss the grid: no need to mark them
            mask[top:bottom, left:right] = True


_FEW_BOXES = 10  # up to this many other boxes, _relations works on Python floats


def _box_table(corners: np.ndarray) -> np.ndarray:
    """Per box (`corners`, (n, 4)): -x0, -y0, x1, y1, its centre (x, y) and its area, (n, 7), for _relations."""
    table = np.empty((len(corners), 7))
    np.negative(corners[:, :2], out=table[:, :2])
    table[:, 2:4] = corners[:, 2:]
    table[:, 4:6] = (corners[:, :2] + corners[:, 2:]) / 2
    table[:, 6] = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    return table


def _relations(box: tuple[float, float, float, float], table: np.ndarray) -> tuple[list[float], list[float]]:
    """The box's IoU with each box of `table` (_box_table's rows), and the distance between their centres
    (math.hypot of the other's centre less the box's).

    The intersection's low edges are maxima, taken as minima of the negated corners (negating is exact), so
    that one minimum gives all four edges; adding a negated edge is subtracting it. A handful of boxes cost
    less as Python floats, more as arrays: one array operation per step over all of them. Either way the
    same IEEE arithmetic, elementwise (np.fmax and max() from 0.0 differ at most in a zero's sign, which no
    later step sees: a zero IoU never beats 0.0).
    """
    x0, y0, x1, y1 = box
    area, centre_x, centre_y = (x1 - x0) * (y1 - y0), (x0 + x1) / 2, (y0 + y1) / 2
    if len(table) <= _FEW_BOXES:
        overlap, distance = [], []
        for low_x, low_y, high_x, high_y, other_x, other_y, other_area in table.tolist():
            inter = max(0.0, min(high_x, x1) + min(low_x, -x0)) * max(0.0, min(high_y, y1) + min(low_y, -y0))
            union = area + other_area - inter
            overlap.append(inter / union if union > 0 else 0.0)
            distance.append(math.hypot(other_x - centre_x, other_y - centre_y))
        return overlap, distance
    edges = np.minimum(table[:, :4], (-x0, -y0, x1, y1))  # -max(x0, left), -max(y0, top), min(x1, right), ...
    spans = np.fmax(0.0, edges[:, 2:] + edges[:, :2])  # the intersection's width and height
    inter = spans[:, 0] * spans[:, 1]
    union = area + table[:, 6] - inter
    overlap = np.divide(inter, union, out=np.zeros(len(inter)), where=union > 0).tolist()
    offsets = (table[:, 4:6] - (centre_x, centre_y)).tolist()
    return overlap, [math.hypot(dx, dy) for dx, dy in offsets]


def _geometry(
    obj: dict,
    box: tuple[float, float, float, float],
    relations: tuple[list[float], list[float]],
    annotations: list[dict],
    width: int,
    height: int,
) -> list[float]:
    """Shape and place of the box, and how it sits among the image's other boxes: its `relations` to them
    (_relations': IoU, centre distance) and their annotations.

    A Python max() or min() from 0.0 (10.0) gives what a loop of max() (min()) gives: no value here is NaN,
    and a zero never beats 0.0.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    visible = max(0.0, min(x1, width) - max(x0, 0.0)) * max(0.0, min(y1, height) - max(y0, 0.0))
    overlap, distance = relations
    same = [other["category_id"] == obj["category_id"] for other in annotations]
    size = math.sqrt(w * h)
    return [
        math.log(w / h),
        math.log(w * h / (width * height)),
        1.0 - visible / (w * h),
        max([0.0, *overlap]),
        max([0.0, *(value for value, keep in zip(overlap, same, strict=True) if keep)]),
        min([10.0, *(value / size for value in distance)]),  # in box sizes; "far" when there is no other box
        math.log1p(len(annotations)),
    ]


def _image_cells(image: np.ndarray) -> np.ndarray:
    """The colours of the whole image, sampled at _IMAGE_CELLS x _IMAGE_CELLS cell centres: (rows, columns, 3)."""
    height, width = image.shape[:2]
    rows = (_IMAGE_STEPS * height / _IMAGE_CELLS).astype(np.int64)
    columns = (_IMAGE_STEPS * width / _IMAGE_CELLS).astype(np.int64)
    colours = cv2.transform(image.take(rows, axis=0).take(columns, axis=1).astype(np.float64), _OPPONENT)
    colours[..., _LIGHTNESS] /= 3.0
    return colours


def _cell_spans(image: np.ndarray, corners: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Per box, the image cells whose centre lies in it (_spans on the image's cells)."""
    height, width = image.shape[:2]
    return _spans(_IMAGE_STEPS * (height / _IMAGE_CELLS), _IMAGE_STEPS * (width / _IMAGE_CELLS), corners)


def _coverage(spans: list[tuple[int, int, int, int]]) -> np.ndarray:
    """How many of the boxes (their `spans`) hold each of the image's cells."""
    coverage = np.zeros((_IMAGE_CELLS, _IMAGE_CELLS), dtype=np.int32)
    for top, bottom, left, right in spans:
        coverage[top:bottom, left:right] += 1
    return coverage


def _mean_of(colours: np.ndarray, mask: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """The mean colour of the image's cells in `mask` (bool), or `overall` when it holds none: their colours
    summed in row-major order, as the cells the mask selected always were."""
    cells = colours.reshape(-1, 3).compress(mask.reshape(-1), axis=0)
    return np.divide(_colour_sums(cells.reshape(-1, 1, 3)), len(cells)) if len(cells) else overall


def _boxes_on_cells(
    image: np.ndarray, corners: np.ndarray, colours: np.ndarray, overall: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], np.ndarray, np.ndarray]:
    """For the image's readable boxes (`corners`): their _box_table, the image cells each covers, how many
    cover each cell, and the mean colour of the cells outside all of them."""
    spans = _cell_spans(image, corners)
    coverage = _coverage(spans)
    return _box_table(corners), spans, coverage, _mean_of(colours, coverage == 0, overall)


def prepare(image: np.ndarray, scene: dict) -> dict:
    """What every box of the image shares, worked out once per image: the colours of the image's cells and
    their mean, and, when every bbox is four numbers, the image's readable boxes (their corners, which of the
    scene's boxes they are, their _box_table, the cells each covers, how many cover each cell) and the mean
    colour of the cells outside all of them.

    Nothing here costs more than linear time in the boxes: a training task scores only a few of them.
    """
    colours = _image_cells(image)
    overall = np.divide(_colour_sums(colours), _IMAGE_CELLS * _IMAGE_CELLS)
    prepared = {"colours": colours, "overall": overall, "corners": None}
    boxes = _all_boxes(scene["annotations"])
    if boxes is not None:
        corners, readable = boxes
        table, spans, coverage, background = _boxes_on_cells(image, corners, colours, overall)
        prepared.update(corners=corners, readable=readable.tolist(), spans=spans, coverage=coverage)
        prepared.update(background=background, table=table)
    return prepared


def _fit_profile(grid: np.ndarray) -> list[float]:
    """How well the box fits what is around it, against boxes moved, grown or shrunk a little.

    A box's fit: the colour difference between its inner band and the ring just outside it, and the mean
    gradient in that band. A box that fits its object fits better than its neighbours on the grid; a
    shifted, loose or tight one is beaten by a moved, shrunk or grown one.

    The summed-area tables are cv2.integral's over the transposed grid: for floating-point pixels OpenCV runs
    a plain loop per channel (its vector and IPP versions take 8-bit pixels only) that adds the same numbers in
    the same order as numpy's cumulative sum down the rows and then along the columns did (a running sum down
    each column, added to the table's previous column), at a tenth of the cost. They come back transposed,
    (column, row).
    """
    tables = np.empty(_FIT_TABLES)
    tables[-1] = 0.0
    colours, magnitude = (_FIT_EXTENT + 1) ** 2 * 3, (_MAGNITUDE_EXTENT + 1) ** 2
    cv2.integral(
        grid[: 3 * _PLANE].reshape(_STORED, _STORED, 3),
        sum=tables[:colours].reshape(_FIT_EXTENT + 1, _FIT_EXTENT + 1, 3),
        sdepth=cv2.CV_64F,
    )
    cv2.integral(
        _planes(grid)[_PLANE_AT[_MAGNITUDE], :_MAGNITUDE_EXTENT, :_MAGNITUDE_EXTENT],
        sum=tables[colours : colours + magnitude].reshape(_MAGNITUDE_EXTENT + 1, _MAGNITUDE_EXTENT + 1),
        sdepth=cv2.CV_64F,
    )
    corners = tables.take(_FIT_CORNERS)
    sums = (corners[0] - corners[1] - corners[2] + corners[3]).reshape(3, len(_CANDIDATES), 4)  # core, box, outer
    inner_band, ring = (sums[1:] - sums[:-1]) / _FIT_CELLS  # box less core, outer box less box: their means
    difference = inner_band[:, :3] - ring[:, :3]
    contrast = np.sqrt(np.add.reduce(difference * difference, axis=1)).tolist()  # np.linalg.norm's steps
    edges = inner_band[:, 3].tolist()
    features = [contrast[_HERE], edges[_HERE]]
    for group in (slice(0, 25), slice(25, 28), slice(28, 31)):  # moved, grown, shrunk
        features += [max(contrast[group]) - contrast[_HERE], max(edges[group]) - edges[_HERE]]
    moved = contrast[:25]
    best = moved.index(max(moved))  # the first of the largest, as np.argmax (no value is NaN)
    features.append(math.hypot(best // 5 - 2, best % 5 - 2))
    return features


def _norm(vector: np.ndarray) -> float:
    """np.linalg.norm of a vector, as it computes it: the square root of the vector's dot product with itself."""
    return math.sqrt(vector.dot(vector))


def score(image: np.ndarray, obj: dict, scene: dict, prepared: dict) -> list[float] | None:
    height, width = image.shape[:2]
    box = _corners(obj)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w < 2 or h < 2 or x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return None

    centres = np.multiply(_STEPS, ((h,), (w,)))  # the cells' centres: y0 + _STEPS * h, x0 + _STEPS * w
    centres += ((y0,), (x0,))  # ascending: w and h are at least 2
    grid = _grid(image, centres)
    # The image's boxes: the corners of every readable box, which of them are other boxes than `obj`, those
    # other boxes' annotations, and the image cells each covers.
    annotations = scene["annotations"]
    colours, overall = prepared["colours"], prepared["overall"]
    if prepared["corners"] is not None:
        corners, readable, spans, coverage, table = (
            prepared[key] for key in ("corners", "readable", "spans", "coverage", "table")
        )
        every = [annotation["id"] != obj["id"] for annotation in annotations]
        other = np.asarray([is_other for is_other, keep in zip(every, readable, strict=True) if keep], dtype=bool)
        other_annotations = [
            a for a, is_other, keep in zip(annotations, every, readable, strict=True) if is_other and keep
        ]
        background = prepared["background"]
    else:
        corners, other, other_annotations = _boxes_one_by_one(obj, scene)
        table, spans, coverage, background = _boxes_on_cells(image, corners, colours, overall)
    others = corners[other]
    relations = _relations(box, table[other])
    # 1 where a cell lies in another box of the image, else 0.
    planes = _planes(grid)
    covered = planes[_PLANE_AT[_COVERED]]
    covered.fill(0.0)
    _mark(covered.T, others, *centres)

    # The side profiles: per side, per plane (the three colours, the cover, the gradient across the side),
    # the mean of each band, from inside to outside. All 140 bands are read by one take (with the regions
    # below), each band's 32 values in a contiguous row: numpy sums them pairwise as it did the strips it used
    # to gather one by one (plane[span, bands] and plane[bands, span].T, both laid out with each band contiguous).
    cells = grid.take(_READ)
    bands = cells[: _STRIPS.size].reshape(_STRIPS.shape)
    box_ring = cells[_STRIPS.size : _STRIPS.size + _BOX_RING.size].reshape(_BOX_RING.shape)
    band_core = cells[_STRIPS.size + _BOX_RING.size :].reshape(_BAND_CORE.shape)
    sides = (np.add.reduce(bands, axis=1) / bands.shape[1]).reshape(4, -1).tolist()  # the bands' means
    sides.sort(key=lambda side: side[_EDGE])  # a box shifted left looks like one shifted right
    profile = [*sides[0], *sides[1], *sides[2], *sides[3]]

    # The mean colours of the box, the ring just outside it, the box's inner band and its centre: each region's
    # cells in row-major order down three columns, the box's beside the ring's, the band's beside the centre's
    # (see _region_index).
    box_ring_means = _sums(box_ring) / _BOX_RING_CELLS
    box_colour, ring_colour = box_ring_means[:3], box_ring_means[3:]
    means = _sums(band_core) / _BAND_CORE_CELLS
    band_colour, core_colour = means[:3], means[3:]
    # The box's and the ring's spreads: each colour's standard deviation, numpy's std step by step.
    # (The deviations eight cells to a row: numpy's loops run longer on longer rows.)
    deviation = box_ring.reshape(-1, _REPEATED_MEANS.size) - box_ring_means[_REPEATED_MEANS]
    np.square(deviation, out=deviation)
    deviation = deviation.reshape(box_ring.shape)
    deviation[_RING_CELLS:, 3:] = 0.0  # the ring's padding: adding zeros leaves its sums as they were
    spreads = np.sqrt(_sums(deviation) / _BOX_RING_CELLS)
    # Strong edges in the box, and in the ring: the box grown by 6 cells on each side, less the box.
    strong = planes[_PLANE_AT[_MAGNITUDE], _BOX0 - 6 : _BOX1 + 6, _BOX0 - 6 : _BOX1 + 6] >= _STRONG_EDGE
    in_box = int(np.count_nonzero(strong[6:-6, 6:-6]))
    in_ring = int(np.count_nonzero(strong)) - in_box
    # The mean colour of the image's other boxes: of the cells that some box other than the scored one holds.
    by_others = coverage.copy()
    for (top, bottom, left, right), is_other in zip(spans, other.tolist(), strict=True):
        if not is_other:
            by_others[top:bottom, left:right] -= 1
    objects = _mean_of(colours, by_others > 0, overall)
    band_ring, box_objects = band_colour - ring_colour, box_colour - objects
    contrast = [
        *band_ring.tolist(),
        *(core_colour - ring_colour).tolist(),
        _norm(band_ring),
        *(np.add.reduce(spreads.reshape(2, 3), axis=1) / 3).tolist(),  # their means, numpy's mean's steps
        # Shares of strong edges: a whole count over a whole count, one correctly rounded division either way.
        in_box / (_BOX1 - _BOX0) ** 2,
        in_ring / _RING_CELLS,
        _norm(box_objects),
        _norm(box_colour - background),
        *box_objects.tolist(),
    ]
    fit = _fit_profile(grid)
    return [*profile, *contrast, *fit, *_geometry(obj, box, relations, other_annotations, width, height)]
