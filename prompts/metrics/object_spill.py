"""Object spill: whether the box is all object and the object goes on past it, as around a tight box (0 to 1).

A box drawn too small holds nothing but object, and just outside it there is still object. A box
that fits holds some background in its corners and has background around it. To tell object from
background without a detector, the image's own boxes teach a colour model: colours (RGB quantised
to 8 levels per channel) of the cores of the image's other boxes of the same class (of any class
when it has no other) against colours outside every box. Each pixel's object likelihood is
p_obj(colour) / (p_obj(colour) + p_background(colour)), from the two histograms (counts + 0.5).
The box itself is in neither, so it cannot vouch for itself.

The score is the smaller of two means of that likelihood: over the box, and over the ring just
outside it (15% of the shorter side deep). High when both are object-like: the box cuts the object
off. A loose or spurious box holds background (low), a fitting box has background around it.

High is suspicious. The model is learned from a grid of at most about 200 samples along the
image's longer side, so its cost does not grow with the image. None for a box under 4 px either
way or outside the image, and when the image offers fewer than 20 samples of object or of
background to learn from (too few other boxes, or no background left).
"""

import math

import cv2
import numpy as np

NAME = "object_spill"
TITLE = "Object spill (all object inside and around)"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, 1.0)
TAGS = ["geometry", "boundary", "tight"]

_BINS = 512  # 8 levels per colour channel: _codes
_SAMPLES = 200  # samples along the image's longer side, at most, for learning the colour model
_CORE = 0.15  # the core of a box leaves this share of each side out: box corners hold background
_RING = 0.15  # the ring's depth, as a share of the box's shorter side
_MIN_SAMPLES = 20


def _codes(pixels: np.ndarray) -> np.ndarray:
    """Each pixel's histogram bin: its RGB channels cut to their top 3 bits (8 levels), as one number 0..511."""
    red, green, blue = cv2.split(pixels >> 5)  # uint8 planes, each contiguous: the bit operations run faster
    code = red.astype(np.uint16)
    code <<= 3
    code |= green
    code <<= 3
    code |= blue
    return code


def _corners(annotation: dict) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h


def _all_corners(annotations: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every annotation's (x0, y0, x1, y1) (n, 4), and whether it is readable (rows that are not hold junk).

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
        return np.asarray([c or (0.0,) * 4 for c in corners], dtype=np.float64).reshape(-1, 4), readable
    x, y, w, h = boxes.T
    readable = np.isfinite(boxes).all(axis=1) & (w > 0) & (h > 0)
    return np.stack([x, y, x + w, y + h], axis=1), readable


def _sample(image: np.ndarray, step: int) -> np.ndarray:
    """image[::step, ::step] as a contiguous array: what cv2 reads without a copy of its own.

    Each pixel's three bytes are moved as one item (a void view) where the pixels are contiguous: a third
    of the items numpy's byte-by-byte strided copy would move.
    """
    if step == 1 and image.flags.c_contiguous:
        return image
    if image.strides[1:] == (3, 1):
        pixels = image.view(np.dtype((np.void, 3)))[::step, ::step]
        return np.ascontiguousarray(pixels).view(np.uint8).reshape(*pixels.shape[:2], 3)
    return np.ascontiguousarray(image[::step, ::step])


def _mark(mask: np.ndarray, corners: np.ndarray, margin: float, step: int) -> bool:
    """Sets the grid samples whose pixel (row * step, column * step) lies in any of the boxes shrunk by
    `margin` a side; False, with nothing set, if a bound is not finite (math.ceil raises there: `cells` runs).

    The bounds are `cells`' float operations, on all boxes at once; each box is then one slice assignment.
    """
    x0, y0, x1, y1 = corners.T
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    bounds = np.stack([(y0 + dy) / step, (y1 - dy) / step, (x0 + dx) / step, (x1 - dx) / step], axis=1)
    if not np.isfinite(bounds).all():
        return False
    rows, columns = mask.shape
    limits = np.asarray([rows, rows, columns, columns])
    for top, bottom, left, right in np.minimum(np.maximum(np.ceil(bounds), 0), limits).astype(np.int64).tolist():
        mask[top:bottom, left:right] = True
    return True


def _likelihood(image: np.ndarray, obj: dict, scene: dict, box: tuple[float, float, float, float]) -> np.ndarray | None:
    """Object likelihood per colour code, from the image's other boxes against its background."""
    height, width = image.shape[:2]
    step = max(1, math.ceil(max(height, width) / _SAMPLES))
    rows, columns = -(-height // step), -(-width // step)  # the shape of image[::step, ::step]

    def cells(corners: tuple[float, float, float, float], margin: float = 0.0) -> tuple[slice, slice]:
        """The grid samples whose pixel (row * step, column * step) lies in the box shrunk by `margin` a side."""
        x0, y0, x1, y1 = corners
        dx, dy = margin * (x1 - x0), margin * (y1 - y0)
        first_row, last_row = math.ceil((y0 + dy) / step), math.ceil((y1 - dy) / step)
        first_column, last_column = math.ceil((x0 + dx) / step), math.ceil((x1 - dx) / step)
        return (
            slice(min(max(first_row, 0), rows), min(max(last_row, 0), rows)),
            slice(min(max(first_column, 0), columns), min(max(last_column, 0), columns)),
        )

    annotations = scene["annotations"]
    corners, readable = _all_corners(annotations)
    own_id, own_category = obj.get("id"), obj.get("category_id")
    kept = readable & np.asarray([other.get("id") != own_id for other in annotations], dtype=bool)
    same = np.asarray([other.get("category_id") == own_category for other in annotations], dtype=bool)
    others, kin = corners[kept], corners[kept & same]
    boxed = np.zeros((rows, columns), dtype=bool)
    objects = np.zeros((rows, columns), dtype=bool)
    own = np.asarray([box], dtype=np.float64)
    if not (
        _mark(boxed, np.concatenate([own, others]), 0.0, step)
        and _mark(objects, kin if len(kin) else others, _CORE, step)
    ):
        # A bound past float range: box by box, as before, where math.ceil fails.
        boxed[...] = objects[...] = False
        for one in [box, *(tuple(c) for c in others.tolist())]:
            boxed[cells(one)] = True
        for one in (kin if len(kin) else others).tolist():
            objects[cells(tuple(one), _CORE)] = True
    objects[cells(box)] = False
    # The two colour histograms, 8 levels per channel (a byte's top 3 bits: calcHist's bins for [0, 256)
    # split 8 ways), counted exactly: the objects' under the boxes, the background outside every box.
    grid = _sample(image, step)
    histogram = (
        cv2.calcHist([grid], [0, 1, 2], mask.view(np.uint8), [8, 8, 8], [0, 256, 0, 256, 0, 256])
        for mask in (boxed & objects, ~boxed)
    )
    p_object, p_background = (counts.reshape(-1).astype(np.float64) for counts in histogram)
    if p_object.sum() < _MIN_SAMPLES or p_background.sum() < _MIN_SAMPLES:
        return None
    p_object += 0.5
    p_background += 0.5
    p_object /= p_object.sum()
    p_background /= p_background.sum()
    return p_object / (p_object + p_background)


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    height, width = image.shape[:2]
    box = _corners(obj)
    if box is None or box[2] - box[0] < 4 or box[3] - box[1] < 4:
        return None
    x0, y0 = max(round(box[0]), 0), max(round(box[1]), 0)
    x1, y1 = min(round(box[2]), width), min(round(box[3]), height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    likelihood = _likelihood(image, obj, scene, box)
    if likelihood is None:
        return None
    depth = max(2, round(_RING * min(box[2] - box[0], box[3] - box[1])))
    rx0, ry0, rx1, ry1 = max(x0 - depth, 0), max(y0 - depth, 0), min(x1 + depth, width), min(y1 + depth, height)
    around = likelihood[_codes(image[ry0:ry1, rx0:rx1])]
    within = around[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
    ring_count = around.size - within.size
    if ring_count == 0:
        return None  # the box fills the image: no ring to read
    ring_mean = (around.sum() - within.sum()) / ring_count
    return float(min(within.mean(), ring_mean))
