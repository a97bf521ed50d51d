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
image's longer side, so its cost does not grow with the image; the image's histograms are counted
once (`prepare`), and each box's own samples are taken out of them. None for a box under 4 px either
way or outside the image, and when the image offers fewer than 20 samples of object or of
background to learn from (too few other boxes, or no background left).
"""

import math

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
    # Channel by channel, in place: numpy walks a colour plane far faster than the interleaved 3-byte pixels.
    # Red's top bits go to bits 6-8, green's to 3-5, blue's to 0-2.
    code = (pixels[..., 0] & 0xE0).astype(np.uint16) << 1
    code |= (pixels[..., 1] & 0xE0) >> 2
    code |= pixels[..., 2] >> 5
    return code


def _corners(annotation: dict) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h


def _cells(
    corners: tuple[float, float, float, float], margin: float, step: int, rows: int, columns: int
) -> tuple[slice, slice]:
    """The grid samples whose pixel (row * step, column * step) lies in the box shrunk by `margin` a side."""
    x0, y0, x1, y1 = corners
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    first_row, last_row = math.ceil((y0 + dy) / step), math.ceil((y1 - dy) / step)
    first_column, last_column = math.ceil((x0 + dx) / step), math.ceil((x1 - dx) / step)
    return (
        slice(min(max(first_row, 0), rows), min(max(last_row, 0), rows)),
        slice(min(max(first_column, 0), columns), min(max(last_column, 0), columns)),
    )


def prepare(image: np.ndarray, scene: dict) -> dict:
    """What every box of the image shares: the grid's colour codes, the background's histogram, and the
    cores of the boxes (all of them, and per class) with their histograms.

    A box's own model leaves the box out (`_likelihood`): subtracting what lies inside it from these
    histograms of whole counts gives exactly the counts the box's own model needs.
    """
    height, width = image.shape[:2]
    step = max(1, math.ceil(max(height, width) / _SAMPLES))
    codes = _codes(image[::step, ::step])
    rows, columns = codes.shape
    boxed = np.zeros((rows, columns), dtype=bool)
    cores = np.zeros((rows, columns), dtype=bool)
    class_cores: dict = {}  # category -> (its boxes' cores, how many boxes it has here)
    for annotation in scene["annotations"]:
        corners = _corners(annotation)
        if corners is None:
            continue
        boxed[_cells(corners, 0.0, step, rows, columns)] = True
        core = _cells(corners, _CORE, step, rows, columns)
        cores[core] = True
        category = annotation.get("category_id")
        mask, count = class_cores.get(category) or (np.zeros((rows, columns), dtype=bool), 0)
        mask[core] = True
        class_cores[category] = (mask, count + 1)

    def histogram(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes[mask], minlength=_BINS)

    return {
        "step": step,
        "codes": codes,
        "background": histogram(~boxed),
        "cores": (cores, histogram(cores)),
        # Per class: its boxes' cores, their histogram, and how many boxes the class has here.
        "classes": {category: (mask, histogram(mask), count) for category, (mask, count) in class_cores.items()},
    }


def _likelihood(obj: dict, box: tuple[float, float, float, float], prepared: dict) -> np.ndarray | None:
    """Object likelihood per colour code, from the image's other boxes against its background.

    The object samples are the cores of the image's other boxes of the box's class (of any class when it
    has no other), less every sample inside the box; the background is what no box covers. The box's own
    core lies inside the box, so taking the class's cores with it and then removing the box's samples
    leaves exactly the other boxes' cores outside the box.
    """
    codes = prepared["codes"]
    rows, columns = codes.shape
    own_class = prepared["classes"].get(obj.get("category_id"))
    has_kin = own_class is not None and own_class[2] > 1  # the box itself is one of its class's boxes
    cores, core_counts = (own_class[0], own_class[1]) if has_kin else prepared["cores"]
    inside = _cells(box, 0.0, prepared["step"], rows, columns)
    # Whole counts, exact in float64: the sums and the divisions below come out the same in any order.
    p_object = (core_counts - np.bincount(codes[inside][cores[inside]], minlength=_BINS)).astype(np.float64)
    p_background = prepared["background"].astype(np.float64)
    if p_object.sum() < _MIN_SAMPLES or p_background.sum() < _MIN_SAMPLES:
        return None
    p_object += 0.5
    p_background += 0.5
    p_object /= p_object.sum()
    p_background /= p_background.sum()
    return p_object / (p_object + p_background)


def score(image: np.ndarray, obj: dict, scene: dict, prepared: dict) -> float | None:
    height, width = image.shape[:2]
    box = _corners(obj)
    if box is None or box[2] - box[0] < 4 or box[3] - box[1] < 4:
        return None
    x0, y0 = max(round(box[0]), 0), max(round(box[1]), 0)
    x1, y1 = min(round(box[2]), width), min(round(box[3]), height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    likelihood = _likelihood(obj, box, prepared)
    if likelihood is None:
        return None
    depth = max(2, round(_RING * min(box[2] - box[0], box[3] - box[1])))
    rx0, ry0, rx1, ry1 = max(x0 - depth, 0), max(y0 - depth, 0), min(x1 + depth, width), min(y1 + depth, height)
    around = likelihood.take(_codes(image[ry0:ry1, rx0:rx1]))  # take(): a plain lookup, faster than indexing
    within = around[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
    ring_count = around.size - within.size
    if ring_count == 0:
        return None  # the box fills the image: no ring to read
    within_sum = within.sum()
    ring_mean = (around.sum() - within_sum) / ring_count
    return float(min(within_sum / within.size, ring_mean))
