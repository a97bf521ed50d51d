"""Class geometry outlier: how far the box's size and aspect lie from the other boxes of its class (robust z).

A box grown or shrunk by a slip, or a box of one class labelled as another, often has a size or a
shape its class does not have. The box is compared with the other boxes of its own class in the
same image (`scene["annotations"]`: a metric sees one image at a time, so "its class" means its
class in this image); when the image holds fewer than 3 of them, with all the image's other boxes
instead, of any class (a weaker comparison, but a box far from everything else is still odd).
Each of two measures, log(area) and log(width / height), becomes a robust z-score:
(value - median) / (1.4826 * MAD) over those other boxes, the MAD floored at 0.05 (about 5%) so
that a class of near-identical boxes does not turn rounding into outliers. The score is the larger
of the two |z|.

Robust statistics, because the image's other boxes include the errors too: a median and a MAD are
not dragged by a few wrong boxes the way a mean and a standard deviation are.

High is suspicious. None for an empty box, or when the image holds fewer than 3 other boxes at
all: too few to say what a box there looks like. That makes it a metric for images with many
boxes per class (aerial tiles, crowds, shelves), and a weak one on images of a few objects.

Measured honestly, it finds little: on the README's aerial tiles (about 33 boxes a tile) it ranks
injected errors barely above chance, likely because crowns of one class vary more in size than a
loose or tight box changes one; on the demo (about 3 boxes an image) it has too few boxes to go on.
It is for datasets whose objects of a class are alike in size and shape, which neither of those is.
"""

import math

import numpy as np

NAME = "class_geometry_outlier"
TITLE = "Size/aspect outlier within its class (robust z)"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, None)
TAGS = ["geometry", "class"]

_MIN_OTHERS = 3
_MAD_FLOOR = 0.05  # in log units, about a 5% change
_MAD_TO_SD = 1.4826  # a normal distribution's MAD times this is its standard deviation


def _measures(annotation: dict) -> tuple[float, float] | None:
    try:
        w, h = float(annotation["bbox"][2]), float(annotation["bbox"][3])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        return None
    return math.log(w * h), math.log(w / h)


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    own = _measures(obj)
    if own is None:
        return None
    others, kin = [], []
    for other in scene["annotations"]:
        measures = _measures(other) if other.get("id") != obj.get("id") else None
        if measures is not None:
            others.append(measures)
            if other.get("category_id") == obj.get("category_id"):
                kin.append(measures)
    if len(kin) >= _MIN_OTHERS:
        others = kin
    elif len(others) < _MIN_OTHERS:
        return None
    values = np.asarray(others)
    median = np.median(values, axis=0)
    mad = np.maximum(np.median(np.abs(values - median), axis=0), _MAD_FLOOR)
    z = np.abs(np.asarray(own) - median) / (_MAD_TO_SD * mad)
    return float(z.max())
