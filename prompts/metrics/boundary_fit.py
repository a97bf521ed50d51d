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

import numpy as np

NAME = "boundary_fit"
TITLE = "Boundary fit (inside/outside separation per side)"
LEVEL = "object"
SUSPICIOUS = "low"
RANGE = (0.0, 1.0)
TAGS = ["geometry", "boundary"]

_REACH = 0.35  # how far each side may move, as a share of the box size across it
_BAND = 0.08  # how deep each band is, as a share of the box size across it


def _profile(strip: np.ndarray) -> np.ndarray:
    """Per position along axis 1 of `strip` (span along axis 0): mean opponent colour and roughness."""
    pixels = strip.astype(np.float64)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    lightness = (red + green + blue) / 3.0
    channels = [lightness.mean(axis=0), (red - green).mean(axis=0), ((red + green) / 2.0 - blue).mean(axis=0)]
    rough = np.abs(np.diff(lightness, axis=0)).mean(axis=0) if strip.shape[0] > 1 else np.zeros(strip.shape[1])
    return np.stack([*channels, rough], axis=1)


def _side_fit(profile: np.ndarray, edge: int, band: int, reach: int) -> float | None:
    """Separation at `edge` over the best within `reach` of it (moves whose bands leave the strip are skipped)."""
    table = np.vstack([np.zeros((1, profile.shape[1])), np.cumsum(profile, axis=0)])
    edges = edge + np.arange(-reach, reach + 1)
    edges = edges[(edges - band >= 0) & (edges + band <= profile.shape[0])]
    if edge not in edges:
        return None  # the side itself is too close to the image border to read
    above = (table[edges + band] - table[edges]) / band  # the band at higher indices
    below = (table[edges] - table[edges - band]) / band
    separation = np.linalg.norm(above - below, axis=1)
    best = float(separation.max())
    if best <= 1e-9:
        return None  # flat all around: nothing to fit, neither good nor bad
    return float(separation[edges == edge][0]) / best


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

    fits = []
    band_x, reach_x = max(2, round(_BAND * w)), max(1, round(_REACH * w))
    band_y, reach_y = max(2, round(_BAND * h)), max(1, round(_REACH * h))
    # Left and right: columns across, the box's rows along. One strip per side, so a long box reads
    # only the pixels near its sides.
    for edge in (x0, x1):
        start = max(edge - reach_x - band_x, 0)
        stop = min(edge + reach_x + band_x, width)
        if stop - start > 0:
            fit = _side_fit(_profile(image[rows, start:stop]), edge - start, band_x, reach_x)
            if fit is not None:
                fits.append(fit)
    # Top and bottom: rows across, the box's columns along (transposed so the span is axis 0).
    for edge in (y0, y1):
        start = max(edge - reach_y - band_y, 0)
        stop = min(edge + reach_y + band_y, height)
        if stop - start > 0:
            strip = image[start:stop, columns].transpose(1, 0, 2)
            fit = _side_fit(_profile(strip), edge - start, band_y, reach_y)
            if fit is not None:
                fits.append(fit)
    if not fits:
        return None
    return float(sum(fits) / len(fits))
