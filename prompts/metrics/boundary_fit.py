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


def _profile(strip: np.ndarray) -> np.ndarray:
    """Per position along axis 1 of `strip` (span along axis 0): mean opponent colour and roughness.

    A long span is read at most _SPAN rows (evenly spread, each with the row after it for the
    roughness): the means don't need every row, and this keeps a large box as cheap as a small one.

    `strip` holds uint8 RGB pixels, or the same pixels as 3-byte items (a void view, cheaper to gather).
    The red-green and yellow-blue means come from whole-number channel sums: their running float sums
    only ever hold whole and half numbers, all exact, so the sums are the same in any order. Lightness
    (R+G+B)/3 is rounded per pixel, so it is averaged as before, row after row.
    """
    length = strip.shape[0]
    if length < 2:
        return np.zeros((strip.shape[1], 4))
    rows = np.linspace(0, length - 2, min(_SPAN, length - 1)).astype(np.intp)
    rows = rows[np.concatenate([[True], rows[1:] != rows[:-1]])]  # np.unique of an ascending array
    count = 2 * len(rows)
    pixels = np.ascontiguousarray(strip[np.concatenate([rows, rows + 1])]).view(np.uint8).reshape(count, -1, 3)
    red, green, blue = cv2.split(pixels)
    lightness = np.add(red, green, dtype=np.uint16)
    lightness += blue
    lightness = lightness / 3.0
    red, green, blue = cv2.reduce(pixels.reshape(count, -1), 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).reshape(-1, 3).T
    rough = np.abs(lightness[len(rows) :] - lightness[: len(rows)]).mean(axis=0)
    return np.stack(
        [lightness.mean(axis=0), (red - green) / count, ((red + green) / 2.0 - blue) / count, rough], axis=1
    )


def _side_fits(profile: np.ndarray, sides: tuple[int, int], band: int, reach: int) -> list[float]:
    """Each side's separation where it is, over the best within `reach` of it, from one profile across both.

    Moves whose bands would leave the profile (the image) are skipped; a side that can't be read itself,
    or that has no separation anywhere (flat all around), gives nothing.
    """
    table = np.vstack([np.zeros((1, profile.shape[1])), np.cumsum(profile, axis=0)])
    edges = np.asarray(sides)[:, None] + np.arange(-reach, reach + 1)[None, :]
    readable = (edges - band >= 0) & (edges + band <= profile.shape[0])
    at = np.clip(edges, band, profile.shape[0] - band)  # in range everywhere; unreadable moves are masked
    above = (table[at + band] - table[at]) / band  # the band at higher indices
    below = (table[at] - table[at - band]) / band
    separation = np.where(readable, np.linalg.norm(above - below, axis=-1), 0.0)
    fits = []
    for side in range(2):
        best = float(separation[side].max())
        if readable[side, reach] and best > 1e-9:
            fits.append(float(separation[side, reach]) / best)
    return fits


def score(image: np.ndarray, obj: dict, scene: dict) -> float | None:
    height, width = image.shape[:2]
    try:
        x, y, w, h = (float(v) for v in obj["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 6 or h < 6:
        return None
    x0, y0, x1, y1 = round(x), round(y), round(x + w), round(y + h)
    rows = slice(max(y0, 0), min(y1, height))
    columns = slice(max(x0, 0), min(x1, width))
    if rows.stop - rows.start < 2 or columns.stop - columns.start < 2:
        return None

    # The pixels as 3-byte items where they are contiguous: a strip's rows are then gathered whole items
    # at a time, across the image as cheaply as along it.
    pixels = image.view(np.dtype((np.void, 3)))[..., 0] if image.strides[1:] == (3, 1) else image
    fits = []
    # Left and right: columns across, the box's rows along; top and bottom: rows across, the box's
    # columns along (transposed so that the span is axis 0). One strip reaches past both sides, read
    # at _SPAN rows of the span, so both sides share one profile.
    for first, last, size, extent, strip_of in (
        (x0, x1, w, width, lambda start, stop: pixels[rows, start:stop]),
        (y0, y1, h, height, lambda start, stop: pixels[start:stop, columns].swapaxes(0, 1)),
    ):
        band, reach = max(2, round(_BAND * size)), max(1, round(_REACH * size))
        start, stop = max(first - reach - band, 0), min(last + reach + band, extent)
        if stop - start > 2 * band:
            fits += _side_fits(_profile(strip_of(start, stop)), (first - start, last - start), band, reach)
    if not fits:
        return None
    return float(sum(fits) / len(fits))
