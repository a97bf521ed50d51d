"""Boundary fit: whether each box side sits where the object ends, not merely on some edge (0 to 1).

For each side of the box we read a profile across it: for every pixel column (left and right
sides) or row (top and bottom), the mean colour over the box's span along that side, in opponent
channels (lightness, red-green, yellow-blue), plus a roughness channel, the mean absolute
difference between neighbouring pixels along the side (crowns, fur and foliage are rough, ground
and sky smooth). A side's separation at a position is the distance between the mean profile of
the band just inside it and of the band just outside it (each about 8% of the box deep): what
changes from object to background, in colour or in texture, not how strong the edge is.

The side's fit is its separation where it is, divided by the best separation of that side moved
in or out by up to 35% of the box size; the score is the mean over the sides that can be read.
A box whose sides sit on the object's boundary scores close to 1. A shifted, loose or tight box
has a side that a move would improve: below 1. A box on background has no boundary to find, and
its sides score about as low as random positions do. Unlike `box_tightness`, a strong edge of
the background texture does not help a side unless the two bands it separates differ, and a
side is judged against its own neighbourhood, so busy images are not penalised as a whole.

Low is suspicious. None for a box under 6 px either way, or when no side can be read (a side
needs its two bands inside the image; moves that would leave it are not tried).
"""

import math

import cv2
import numpy as np

NAME = "boundary_fit"
TITLE = "Boundary fit (inside/outside separation per side)"
LEVEL = "object"
SUSPICIOUS = "low"
RANGE = (0.0, 1.0)
TAGS = ["geometry", "boundary"]

_REACH = 0.35  # how far each side may move, as a share of the box size across it
_BAND = 0.08  # how deep each band is, as a share of the box size across it
_SPAN = 32  # rows (or columns) read along a side, at most


def _sampled(length: int) -> list[int]:
    """The rows a span of `length` is read at: np.linspace(0, length - 2, min(_SPAN, length - 1)) truncated.

    A long span is read at most _SPAN rows (evenly spread, each with the row after it for the
    roughness): the means don't need every row, and this keeps a large box as cheap as a small one.
    Computed as numpy does (k * step, the last one exactly); the rows are distinct, since a step is 1
    or more than 1.
    """
    if length - 1 <= _SPAN:
        return list(range(length - 1))
    step = (length - 2) / (_SPAN - 1)
    return [int(k * step) for k in range(_SPAN - 1)] + [length - 2]


_ONES = np.ones((1, 3))  # R+G+B from the channels
_OPPONENT = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])  # red-green and yellow-blue from channel sums


def _profile(strip: np.ndarray) -> np.ndarray:
    """Per position along axis 1 of `strip` (uint8 RGB, span along axis 0): mean opponent colour and roughness.

    (positions, 4): lightness, red-green, yellow-blue, roughness. The red-green and yellow-blue means
    come from whole-number channel sums: their running float sums only ever hold whole and half
    numbers, all exact, so the sums are the same in any order. Lightness (R+G+B)/3 is rounded per
    pixel, so it is averaged row after row (the order numpy's mean(axis=0) adds them in, as does
    cv2.reduce along the rows).
    """
    length = strip.shape[0]
    if length < 2:
        return np.zeros((strip.shape[1], 4))
    rows = _sampled(length)
    count = 2 * len(rows)
    pixels = strip[rows + [row + 1 for row in rows]]
    # R+G+B, whole numbers, exact in float64 whichever way they are added; then rounded per pixel.
    lightness = cv2.transform(pixels.astype(np.float64), _ONES)
    lightness /= 3.0
    profile = np.empty((strip.shape[1], 4))
    np.divide(cv2.reduce(lightness, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F)[0], count, out=profile[:, 0])
    sums = cv2.reduce(pixels.reshape(count, -1), 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).astype(np.float64)
    np.divide(cv2.transform(sums.reshape(1, -1, 3), _OPPONENT)[0], count, out=profile[:, 1:3])
    rough = cv2.absdiff(lightness[len(rows) :], lightness[: len(rows)])
    np.divide(cv2.reduce(rough, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F)[0], len(rows), out=profile[:, 3])
    return profile


def _side_fits(profile: np.ndarray, sides: tuple[int, int], band: int, reach: int) -> list[float]:
    """Each side's separation where it is, over the best within `reach` of it, from one profile across both.

    Moves whose bands would leave the profile (the image) are skipped; a side that can't be read itself,
    or that has no separation anywhere (flat all around), gives nothing. The separation is taken once at
    every readable position of the profile, and each side looks at its stretch of it.
    """
    length = profile.shape[0]
    # Running sums, one position after the other (cv2.integral of a single row: exactly np.cumsum's).
    table = cv2.integral(profile.reshape(1, length, 4), sdepth=cv2.CV_64F)[1]
    # The band's mean from each position on; at position e, the band above is bands[e], the one below
    # bands[e - band].
    bands = table[band:] - table[:-band]
    bands /= band
    change = bands[band:] - bands[:-band]  # positions band to length - band
    change *= change
    # np.linalg.norm(axis=-1): the squares added in channel order.
    squares = change[:, 0] + change[:, 1]
    squares += change[:, 2]
    squares += change[:, 3]
    separation = np.sqrt(squares).tolist()
    fits = []
    for side in sides:
        if band <= side <= length - band:
            best = max(separation[max(side - reach, band) - band : min(side + reach, length - band) - band + 1])
            if best > 1e-9:
                fits.append(separation[side - band] / best)
    return fits


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    height, width = image.shape[:2]
    try:
        x, y, w, h = map(float, obj["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h)) or w < 6 or h < 6:
        return None
    x0, y0, x1, y1 = round(x), round(y), round(x + w), round(y + h)
    rows = slice(max(y0, 0), min(y1, height))
    columns = slice(max(x0, 0), min(x1, width))
    if rows.stop - rows.start < 2 or columns.stop - columns.start < 2:
        return None

    fits = []
    # Left and right: columns across, the box's rows along; top and bottom: rows across, the box's
    # columns along (transposed, by cv2: cheaper than gathering pixels down the image's columns, so
    # that the span is axis 0). One strip reaches past both sides, read at _SPAN rows of the span, so
    # both sides share one profile.
    for first, last, size, extent, strip_of in (
        (x0, x1, w, width, lambda start, stop: image[rows, start:stop]),
        (y0, y1, h, height, lambda start, stop: cv2.transpose(image[start:stop, columns])),
    ):
        band, reach = max(2, round(_BAND * size)), max(1, round(_REACH * size))
        start, stop = max(first - reach - band, 0), min(last + reach + band, extent)
        if stop - start > 2 * band:
            fits += _side_fits(_profile(strip_of(start, stop)), (first - start, last - start), band, reach)
    if not fits:
        return None
    return float(sum(fits) / len(fits))
