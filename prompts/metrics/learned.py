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

# The box's planes, in this order: the three opponent colours, the share covered by other boxes, and the
# gradient across columns (for the left and right sides) and across rows (top and bottom).
_LIGHTNESS, _RED_GREEN, _YELLOW_BLUE, _COVERED, _ACROSS_COLUMNS, _ACROSS_ROWS = range(6)


def _strip_index() -> np.ndarray:
    """Flat indices into the (6, _CELLS, _CELLS) planes of every band of the side profiles, one band a row.

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
                band = min(max(band_at(offset), 0), _CELLS - 1)
                cells = along * _CELLS + band if runs_along_rows else band * _CELLS + along
                rows.append(plane * _CELLS * _CELLS + cells)
    return np.asarray(rows)


_STRIPS = _strip_index()
_EDGE = len(_OFFSETS) * 4 + _OFFSETS.index(0)  # in a side's profile: the gradient at the edge itself


def _region(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((_CELLS, _CELLS), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _colour_cells(mask: np.ndarray) -> np.ndarray:
    """Flat indices into the planes of the region's cells' colours, (cells, 3), the cells in row-major order."""
    return np.flatnonzero(mask)[:, None] + np.arange(3)[None, :] * _CELLS * _CELLS


_INNER = _region(_BOX0, _BOX0, _BOX1, _BOX1)  # the box
_CORE = _region(_BOX0 + 8, _BOX0 + 8, _BOX1 - 8, _BOX1 - 8)  # its centre
_RING = _region(_BOX0 - 6, _BOX0 - 6, _BOX1 + 6, _BOX1 + 6) & ~_INNER  # the ring just outside it
_INNER_CELLS, _CORE_CELLS = _colour_cells(_INNER), _colour_cells(_CORE)
_BAND_CELLS = _colour_cells(_INNER & ~_CORE)  # the band along the box's edges
_RING_CELLS = _colour_cells(_RING)
_RING_FLAT = np.flatnonzero(_RING)


def _fit_rectangles() -> tuple[list[tuple[int, int, int]], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """_fit_profile's candidates, and where it reads the summed-area table for each.

    The candidates: the box moved by (dy, dx) cells, then grown, then shrunk by d cells. For each, three
    rectangles [top, left, bottom, right), clipped to the grid: the candidate, its core (a band in from each
    side) and its outer box (a band out). Returns the candidates, the rows and the columns of the four corners
    read per rectangle (bottom-right, top-right, bottom-left, top-left: (4, rectangles) each), and per
    candidate the cells in its inner band and in its ring (at least 1), as floats to divide by.
    """
    steps = (-8, -4, 0, 4, 8)
    candidates = [(dy, dx, 0) for dy in steps for dx in steps]  # moved by (dy, dx) cells
    candidates += [(0, 0, d) for d in (2, 4, 8)] + [(0, 0, -d) for d in (2, 4, 8)]  # grown, shrunk by d
    boxes = np.asarray([(_BOX0 + dy - d, _BOX0 + dx - d, _BOX1 + dy + d, _BOX1 + dx + d) for dy, dx, d in candidates])
    band = 3
    shrink = np.asarray([band, band, -band, -band])
    top, left, bottom, right = np.clip(np.concatenate([boxes, boxes + shrink, boxes - shrink]), 0, _CELLS).T
    whole, core, outer = np.maximum((bottom - top) * (right - left), 0).reshape(3, -1)
    rows = np.stack([bottom, top, bottom, top])
    columns = np.stack([right, right, left, left])
    return (
        candidates,
        rows,
        columns,
        np.maximum(whole - core, 1).astype(np.float64),
        np.maximum(outer - whole, 1).astype(np.float64),
    )


_CANDIDATES, _FIT_ROWS, _FIT_COLUMNS, _FIT_BAND_CELLS, _FIT_RING_CELLS = _fit_rectangles()


def _grid(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The box grown by _MARGIN of its size on each side, sampled at the centres of _CELLS x _CELLS cells.

    Sampling, not averaging: averaging each cell costs more than everything else the metric does, and the
    bands below average 32 cells each anyway. Cells past the image edge repeat its edge pixels; the
    geometry features say how much of the box is out. The pixels stay uint8: the planes convert them.
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box
    rows = np.clip(np.floor(y0 + _STEPS * (y1 - y0)), 0, height - 1).astype(np.int64)
    columns = np.clip(np.floor(x0 + _STEPS * (x1 - x0)), 0, width - 1).astype(np.int64)
    return image.take(rows, axis=0).take(columns, axis=1)  # two takes: cheaper than one gather on a grid


def _opponent(cells: np.ndarray, out: np.ndarray) -> None:
    """Writes the opponent colours of uint8 RGB `cells` (..., 3) into `out` (3, ...): lightness (R+G+B)/3,
    red-green R-G and yellow-blue (R+G)/2-B, one operation at a time in float64, without temporaries."""
    lightness, red_green, yellow_blue = out
    red, green, blue = cells[..., 0], cells[..., 1], cells[..., 2]
    np.add(red, green, out=lightness, dtype=np.float64)
    lightness += blue
    lightness /= 3.0
    np.subtract(red, green, out=red_green, dtype=np.float64)
    np.add(red, green, out=yellow_blue, dtype=np.float64)
    yellow_blue /= 2.0
    yellow_blue -= blue


def _sums(cells: np.ndarray) -> np.ndarray:
    """Per colour, the sum of (n, 3) cells, added one cell after another from the first.

    That is the order of numpy's sum over axis 0 (a running total per colour, row by row), and of OpenCV's
    reduction of a floating-point matrix to one row (a plain loop, first row copied, each next row added),
    which costs a fifth as much on three-wide rows.
    """
    return cv2.reduce(cells, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F)[0]


def _mean(cells: np.ndarray) -> np.ndarray:
    """Per colour, the mean of (n, 3) cells: numpy's mean over axis 0, bit for bit."""
    return _sums(cells) / cells.shape[0]


def _spread(cells: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per colour, the standard deviation of (n, 3) cells around their `mean`: numpy's std, step by step."""
    deviation = cells - mean
    np.square(deviation, out=deviation)
    return np.sqrt(_sums(deviation) / cells.shape[0])


def _corners(annotation: dict) -> tuple[float, float, float, float] | None:
    x, y, w, h = (float(v) for v in annotation["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h


def _boxes(obj: dict, scene: dict) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The image's boxes, read once per call: the corners of every readable box (n, 4), which of them are
    other boxes than `obj`, and those other boxes' annotations (in the scene's order throughout).

    All boxes at once when every bbox is four numbers: numpy's conversion of a number to float64 is
    float()'s, and the checks and the sums are the same elementwise. Anything else goes box by box, so that a
    malformed box fails (or is skipped) exactly as it always did.
    """
    annotations = scene["annotations"]
    try:
        boxes = np.asarray([annotation["bbox"] for annotation in annotations], dtype=np.float64)
    except (KeyError, TypeError, ValueError, OverflowError):
        boxes = None
    if boxes is None or boxes.shape != (len(annotations), 4):
        return _boxes_one_by_one(obj, scene)
    x, y, w, h = boxes.T
    readable = np.isfinite(boxes).all(axis=1) & (w > 0) & (h > 0)
    other = np.asarray([annotation["id"] != obj["id"] for annotation in annotations], dtype=bool)
    corners = np.stack([x, y, x + w, y + h], axis=1)[readable]
    kept = readable & other
    return corners, other[readable], [annotation for annotation, keep in zip(annotations, kept, strict=True) if keep]


def _boxes_one_by_one(obj: dict, scene: dict) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """_boxes for a scene with a box that is not four numbers: each box read by _corners."""
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


def _mark(mask: np.ndarray, corners: np.ndarray, centre_y: np.ndarray, centre_x: np.ndarray) -> None:
    """Sets the cells of `mask` whose centre lies in any of the boxes, [x0, x1) x [y0, y1).

    The centres ascend, so the cells in a box run together along each axis: from the first centre at or past
    its low edge to the first at or past its high edge (np.searchsorted, for all boxes at once). Each box is
    then one slice assignment: the cells that the centre-by-centre comparisons select.
    """
    rows = np.searchsorted(centre_y, corners[:, [1, 3]]).tolist()
    columns = np.searchsorted(centre_x, corners[:, [0, 2]]).tolist()
    for (top, bottom), (left, right) in zip(rows, columns, strict=True):
        mask[top:bottom, left:right] = True


def _geometry(
    obj: dict,
    box: tuple[float, float, float, float],
    others: np.ndarray,
    annotations: list[dict],
    width: int,
    height: int,
) -> list[float]:
    """Shape and place of the box, and how it sits among the image's other boxes (their corners and annotations).

    One array operation per step over all other boxes: elementwise, the same IEEE arithmetic as on single
    floats. np.fmax and a Python max() from 0.0 give what a loop of max() gives, NaN and -0.0 included (a
    NaN never wins; a zero never beats 0.0); the distances keep math.hypot and min() from 10.0.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    visible = max(0.0, min(x1, width) - max(x0, 0.0)) * max(0.0, min(y1, height) - max(y0, 0.0))
    best_iou = best_same_iou = 0.0
    nearest = 10.0  # in box sizes; "far" when the image has no other box
    cx, cy, size = (x0 + x1) / 2, (y0 + y1) / 2, math.sqrt(w * h)
    if len(others):
        left, top, right, bottom = others.T
        ix = np.fmax(0.0, np.minimum(x1, right) - np.maximum(x0, left))
        iy = np.fmax(0.0, np.minimum(y1, bottom) - np.maximum(y0, top))
        inter = ix * iy
        union = (x1 - x0) * (y1 - y0) + (right - left) * (bottom - top) - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        best_iou = max(0.0, float(np.fmax.reduce(overlap)))
        same = np.asarray([other["category_id"] == obj["category_id"] for other in annotations], dtype=bool)
        if same.any():
            best_same_iou = max(0.0, float(np.fmax.reduce(overlap[same])))
        dx = ((left + right) / 2 - cx).tolist()
        dy = ((top + bottom) / 2 - cy).tolist()
        nearest = min([nearest, *(math.hypot(a, b) / size for a, b in zip(dx, dy, strict=True))])
    return [
        math.log(w / h),
        math.log(w * h / (width * height)),
        1.0 - visible / (w * h),
        best_iou,
        best_same_iou,
        nearest,
        math.log1p(len(others)),
    ]


def _image_colours(image: np.ndarray, corners: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean colour of the image's other boxes, and of the image outside every box (cells of the image).

    `corners` holds every readable box of the image, `other` says which are not the scored box.
    """
    height, width = image.shape[:2]
    rows = ((np.arange(_IMAGE_CELLS) + 0.5) * height / _IMAGE_CELLS).astype(np.int64)
    columns = ((np.arange(_IMAGE_CELLS) + 0.5) * width / _IMAGE_CELLS).astype(np.int64)
    colours = np.empty((_IMAGE_CELLS * _IMAGE_CELLS, 3))  # (cells, colour): what _sums reads
    _opponent(image.take(rows, axis=0).take(columns, axis=1).reshape(-1, 3), colours.T)
    cell_h, cell_w = height / _IMAGE_CELLS, width / _IMAGE_CELLS
    centre_y = (np.arange(_IMAGE_CELLS) + 0.5) * cell_h
    centre_x = (np.arange(_IMAGE_CELLS) + 0.5) * cell_w
    in_other = np.zeros((_IMAGE_CELLS, _IMAGE_CELLS), dtype=bool)
    _mark(in_other, corners[other], centre_y, centre_x)
    in_any = in_other.copy()  # and the boxes that are the scored one (usually one)
    _mark(in_any, corners[~other], centre_y, centre_x)
    in_any, in_other = in_any.ravel(), in_other.ravel()
    overall = _mean(colours)
    objects = _mean(colours[in_other]) if in_other.any() else overall
    background = _mean(colours[~in_any]) if (~in_any).any() else overall
    return objects, background


def _planes(cells: np.ndarray, box: tuple[float, float, float, float], others: np.ndarray) -> np.ndarray:
    """The grid's planes, (6, _CELLS, _CELLS) in the order of _LIGHTNESS ... _ACROSS_ROWS.

    Each plane is written in place, operation by operation as the opponent colours and np.gradient
    compute them (so the same values), without the temporaries and the stacking.
    """
    planes = np.empty((6, _CELLS, _CELLS))
    lightness, _, _, covered, across_columns, across_rows = planes
    _opponent(cells, planes[:3])
    # |np.gradient|: central differences over 2 inside, one-sided differences at the two ends.
    np.subtract(lightness[2:], lightness[:-2], out=across_rows[1:-1])
    across_rows[1:-1] /= 2.0
    np.subtract(lightness[1], lightness[0], out=across_rows[0])
    np.subtract(lightness[-1], lightness[-2], out=across_rows[-1])
    np.abs(across_rows, out=across_rows)
    np.subtract(lightness[:, 2:], lightness[:, :-2], out=across_columns[:, 1:-1])
    across_columns[:, 1:-1] /= 2.0
    np.subtract(lightness[:, 1], lightness[:, 0], out=across_columns[:, 0])
    np.subtract(lightness[:, -1], lightness[:, -2], out=across_columns[:, -1])
    np.abs(across_columns, out=across_columns)
    # 1 where a cell lies in another box of the image, else 0.
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    centre_x, centre_y = x0 + _STEPS * w, y0 + _STEPS * h  # ascending: w and h are at least 2
    in_others = np.zeros((_CELLS, _CELLS), dtype=bool)
    _mark(in_others, others, centre_y, centre_x)
    covered[...] = in_others
    return planes


def _fit_profile(planes: np.ndarray, gradient: np.ndarray) -> list[float]:
    """How well the box fits what is around it, against boxes moved, grown or shrunk a little.

    A box's fit: the colour difference between its inner band and the ring just outside it, and the mean
    gradient in that band. A box that fits its object fits better than its neighbours on the grid; a
    shifted, loose or tight one is beaten by a moved, shrunk or grown one.

    The summed-area table is cv2.integral's over the transposed grid: for floating-point pixels OpenCV runs a
    plain loop (its vector and IPP versions take 8-bit pixels only) that adds the same numbers in the same
    order as numpy's cumulative sum down the rows and then along the columns did (a running sum down each
    column, added to the table's previous column), at a tenth of the cost. It comes back transposed,
    (column, row, plane).
    """
    integrand = np.empty((_CELLS, _CELLS, 4))
    integrand[..., :3] = planes[:3].T
    integrand[..., 3] = gradient.T
    table = cv2.integral(integrand, sdepth=cv2.CV_64F)
    corners = table[_FIT_COLUMNS, _FIT_ROWS]
    sums = corners[0] - corners[1] - corners[2] + corners[3]
    count = len(_CANDIDATES)  # per candidate: its box, its core, its outer box
    whole, core, outer = sums[:count], sums[count : 2 * count], sums[2 * count :]
    inner_band = (whole - core) / _FIT_BAND_CELLS[:, None]
    ring = (outer - whole) / _FIT_RING_CELLS[:, None]
    contrast = np.linalg.norm(inner_band[:, :3] - ring[:, :3], axis=1)
    edges = inner_band[:, 3]
    here = _CANDIDATES.index((0, 0, 0))
    moved, grown, shrunk = slice(0, 25), slice(25, 28), slice(28, 31)
    features = [float(contrast[here]), float(edges[here])]
    for group in (moved, grown, shrunk):
        features += [float(contrast[group].max() - contrast[here]), float(edges[group].max() - edges[here])]
    best = int(np.argmax(contrast[moved]))
    features.append(math.hypot(best // 5 - 2, best % 5 - 2))
    return features


def score(image: np.ndarray, obj: dict, scene: dict) -> list[float] | None:
    height, width = image.shape[:2]
    box = _corners(obj)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w < 2 or h < 2 or x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return None

    cells = _grid(image, box)
    corners, other, other_annotations = _boxes(obj, scene)
    others = corners[other]
    planes = _planes(cells, box, others)

    # The side profiles: per side, per plane (the three colours, the cover, the gradient across the side),
    # the mean of each band, from inside to outside. All 140 bands are read by one take, each band's 32
    # values in a contiguous row: numpy sums them pairwise as it did the strips it used to gather one by one
    # (plane[span, bands] and plane[bands, span].T, both laid out with each band contiguous).
    sides = planes.reshape(-1)[_STRIPS].mean(axis=1).reshape(4, -1).tolist()
    sides.sort(key=lambda side: side[_EDGE])  # a box shifted left looks like one shifted right
    profile = [value for side in sides for value in side]

    # The regions' cells, (cells, 3 colours) in row-major order: what the colours masked by each region held.
    flat = planes.reshape(-1)
    inner, ring = flat[_INNER_CELLS], flat[_RING_CELLS]
    box_colour, band_colour = _mean(inner), _mean(flat[_BAND_CELLS])
    core_colour, ring_colour = _mean(flat[_CORE_CELLS]), _mean(ring)
    gradient = np.hypot(planes[_ACROSS_ROWS], planes[_ACROSS_COLUMNS])
    strong = gradient >= _STRONG_EDGE
    objects, background = _image_colours(image, corners, other)
    contrast = [
        *(band_colour - ring_colour),
        *(core_colour - ring_colour),
        float(np.linalg.norm(band_colour - ring_colour)),
        float(_spread(inner, box_colour).mean()),
        float(_spread(ring, ring_colour).mean()),
        # Shares of strong edges: a whole count over a whole count, one correctly rounded division either way.
        int(np.count_nonzero(strong[_BOX0:_BOX1, _BOX0:_BOX1])) / (_BOX1 - _BOX0) ** 2,
        int(np.count_nonzero(strong.ravel()[_RING_FLAT])) / len(_RING_FLAT),
        float(np.linalg.norm(box_colour - objects)),
        float(np.linalg.norm(box_colour - background)),
        *(box_colour - objects),
    ]
    fit = _fit_profile(planes, gradient)
    return [*profile, *contrast, *fit, *_geometry(obj, box, others, other_annotations, width, height)]
