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


def _grid(image: np.ndarray, box: tuple[float, float, float, float], margin: float, cells: int) -> np.ndarray:
    """The box grown by `margin` of its size on each side, sampled at the centres of cells x cells cells.

    Sampling, not averaging: averaging each cell costs more than everything else the metric does, and the
    bands below average 32 cells each anyway. Cells past the image edge repeat its edge pixels; the
    geometry features say how much of the box is out.
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box
    steps = (np.arange(cells) + 0.5) / cells * (1 + 2 * margin) - margin
    rows = np.clip(np.floor(y0 + steps * (y1 - y0)), 0, height - 1).astype(np.int64)
    columns = np.clip(np.floor(x0 + steps * (x1 - x0)), 0, width - 1).astype(np.int64)
    return image[rows[:, None], columns[None, :]].astype(np.float64)


def _opponent(cells: np.ndarray) -> np.ndarray:
    red, green, blue = cells[..., 0], cells[..., 1], cells[..., 2]
    return np.stack([(red + green + blue) / 3.0, red - green, (red + green) / 2.0 - blue], axis=-1)


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _corners(annotation: dict) -> tuple[float, float, float, float] | None:
    x, y, w, h = (float(v) for v in annotation["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h


def _geometry(obj: dict, scene: dict, box: tuple[float, float, float, float], width: int, height: int) -> list[float]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    visible = max(0.0, min(x1, width) - max(x0, 0.0)) * max(0.0, min(y1, height) - max(y0, 0.0))
    best_iou = best_same_iou = 0.0
    nearest = 10.0  # in box sizes; "far" when the image has no other box
    others = 0
    cx, cy, size = (x0 + x1) / 2, (y0 + y1) / 2, math.sqrt(w * h)
    for other in scene["annotations"]:
        if other["id"] == obj["id"]:
            continue
        corners = _corners(other)
        if corners is None:
            continue
        others += 1
        overlap = _iou(box, corners)
        best_iou = max(best_iou, overlap)
        if other["category_id"] == obj["category_id"]:
            best_same_iou = max(best_same_iou, overlap)
        distance = math.hypot((corners[0] + corners[2]) / 2 - cx, (corners[1] + corners[3]) / 2 - cy)
        nearest = min(nearest, distance / size)
    return [
        math.log(w / h),
        math.log(w * h / (width * height)),
        1.0 - visible / (w * h),
        best_iou,
        best_same_iou,
        nearest,
        math.log1p(others),
    ]


def _image_colours(image: np.ndarray, scene: dict, obj: dict) -> tuple[np.ndarray, np.ndarray]:
    """The mean colour of the image's other boxes, and of the image outside every box (cells of the image)."""
    height, width = image.shape[:2]
    rows = ((np.arange(_IMAGE_CELLS) + 0.5) * height / _IMAGE_CELLS).astype(np.int64)
    columns = ((np.arange(_IMAGE_CELLS) + 0.5) * width / _IMAGE_CELLS).astype(np.int64)
    colours = _opponent(image[rows[:, None], columns[None, :]].astype(np.float64))
    cell_h, cell_w = height / colours.shape[0], width / colours.shape[1]
    centre_y = (np.arange(colours.shape[0]) + 0.5) * cell_h
    centre_x = (np.arange(colours.shape[1]) + 0.5) * cell_w
    in_other = np.zeros(colours.shape[:2], dtype=bool)
    in_any = np.zeros(colours.shape[:2], dtype=bool)
    for annotation in scene["annotations"]:
        corners = _corners(annotation)
        if corners is None:
            continue
        mask = np.outer(
            (centre_y >= corners[1]) & (centre_y < corners[3]), (centre_x >= corners[0]) & (centre_x < corners[2])
        )
        in_any |= mask
        if annotation["id"] != obj["id"]:
            in_other |= mask
    overall = colours.reshape(-1, 3).mean(axis=0)
    objects = colours[in_other].mean(axis=0) if in_other.any() else overall
    background = colours[~in_any].mean(axis=0) if (~in_any).any() else overall
    return objects, background


def _other_boxes(scene: dict, obj: dict, box: tuple[float, float, float, float]) -> np.ndarray:
    """1 where a cell of the box's grid lies in another box of the image, else 0."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    steps = (np.arange(_CELLS) + 0.5) / _CELLS * (1 + 2 * _MARGIN) - _MARGIN
    centre_x, centre_y = x0 + steps * w, y0 + steps * h
    covered = np.zeros((_CELLS, _CELLS))
    for other in scene["annotations"]:
        corners = _corners(other)
        if other["id"] == obj["id"] or corners is None:
            continue
        rows = (centre_y >= corners[1]) & (centre_y < corners[3])
        columns = (centre_x >= corners[0]) & (centre_x < corners[2])
        if rows.any() and columns.any():
            covered[np.ix_(rows, columns)] = 1.0
    return covered


def _rectangle_means(table: np.ndarray, rectangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums and cell counts of rectangles [top, left, bottom, right) (clipped to the grid) from a summed-area table."""
    top, left, bottom, right = (np.clip(rectangles[:, k], 0, _CELLS) for k in range(4))
    sums = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    return sums, np.maximum((bottom - top) * (right - left), 0)


def _fit_profile(colours: np.ndarray, gradient: np.ndarray) -> list[float]:
    """How well the box fits what is around it, against boxes moved, grown or shrunk a little.

    A box's fit: the colour difference between its inner band and the ring just outside it, and the mean
    gradient in that band. A box that fits its object fits better than its neighbours on the grid; a
    shifted, loose or tight one is beaten by a moved, shrunk or grown one.
    """
    planes = np.concatenate([colours, gradient[..., None]], axis=-1)
    table = np.zeros((_CELLS + 1, _CELLS + 1, planes.shape[-1]))
    table[1:, 1:] = planes.cumsum(axis=0).cumsum(axis=1)
    steps = (-8, -4, 0, 4, 8)
    candidates = [(dy, dx, 0) for dy in steps for dx in steps]  # moved by (dy, dx) cells
    candidates += [(0, 0, d) for d in (2, 4, 8)] + [(0, 0, -d) for d in (2, 4, 8)]  # grown, shrunk by d
    boxes = np.asarray([(_BOX0 + dy - d, _BOX0 + dx - d, _BOX1 + dy + d, _BOX1 + dx + d) for dy, dx, d in candidates])
    band = 3
    whole, whole_n = _rectangle_means(table, boxes)
    core, core_n = _rectangle_means(table, boxes + np.asarray([band, band, -band, -band]))
    outer, outer_n = _rectangle_means(table, boxes + np.asarray([-band, -band, band, band]))
    inner_band = (whole - core) / np.maximum(whole_n - core_n, 1)[:, None]
    ring = (outer - whole) / np.maximum(outer_n - whole_n, 1)[:, None]
    contrast = np.linalg.norm(inner_band[:, :3] - ring[:, :3], axis=1)
    edges = inner_band[:, 3]
    here = candidates.index((0, 0, 0))
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

    colours = _opponent(_grid(image, box, _MARGIN, _CELLS))
    lightness = colours[..., 0]
    across_rows = np.abs(np.gradient(lightness, axis=0))
    across_columns = np.abs(np.gradient(lightness, axis=1))

    covered = _other_boxes(scene, obj, box)
    span = slice(_BOX0, _BOX1)
    planes = (lightness, colours[..., 1], colours[..., 2], covered)
    sides = []  # per side, per plane and the gradient across it: the value in each band, from inside to outside
    for gradient, band_at, runs_along_rows in (
        (across_columns, lambda offset: _BOX0 - 1 - offset, True),  # left edge: outside is the lower index
        (across_columns, lambda offset: _BOX1 + offset, True),  # right edge
        (across_rows, lambda offset: _BOX0 - 1 - offset, False),  # top edge
        (across_rows, lambda offset: _BOX1 + offset, False),  # bottom edge
    ):
        bands = [int(np.clip(band_at(offset), 0, _CELLS - 1)) for offset in _OFFSETS]
        side = []
        for plane in (*planes, gradient):
            strips = plane[span, bands] if runs_along_rows else plane[bands, span].T
            side.extend(strips.mean(axis=0).tolist())
        sides.append(side)
    edge = len(_OFFSETS) * len(planes) + _OFFSETS.index(0)  # the gradient at the edge itself
    sides.sort(key=lambda side: side[edge])
    profile = [value for side in sides for value in side]

    inner = np.zeros((_CELLS, _CELLS), dtype=bool)
    inner[_BOX0:_BOX1, _BOX0:_BOX1] = True
    core = np.zeros_like(inner)
    core[_BOX0 + 8 : _BOX1 - 8, _BOX0 + 8 : _BOX1 - 8] = True
    inner_band = inner & ~core
    ring = np.zeros_like(inner)
    ring[_BOX0 - 6 : _BOX1 + 6, _BOX0 - 6 : _BOX1 + 6] = True
    ring &= ~inner
    strong = np.hypot(across_rows, across_columns) >= _STRONG_EDGE
    box_colour, band_colour = colours[inner].mean(axis=0), colours[inner_band].mean(axis=0)
    core_colour, ring_colour = colours[core].mean(axis=0), colours[ring].mean(axis=0)
    objects, background = _image_colours(image, scene, obj)
    contrast = [
        *(band_colour - ring_colour),
        *(core_colour - ring_colour),
        float(np.linalg.norm(band_colour - ring_colour)),
        float(colours[inner].std(axis=0).mean()),
        float(colours[ring].std(axis=0).mean()),
        float(strong[inner].mean()),
        float(strong[ring].mean()),
        float(np.linalg.norm(box_colour - objects)),
        float(np.linalg.norm(box_colour - background)),
        *(box_colour - objects),
    ]
    fit = _fit_profile(colours, np.hypot(across_rows, across_columns))
    return [*profile, *contrast, *fit, *_geometry(obj, scene, box, width, height)]
