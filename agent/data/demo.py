"""A small procedural COCO dataset of cartoon animals, for demos, tests and benchmarks.

Every image is drawn from scratch with numpy and OpenCV: a textured background, then one to six
animals (panda, bear, fox) pasted in order, so later animals occlude earlier ones. Because we draw
the pixels ourselves, the ground truth is exact: each box and polygon comes from the animal's
*visible* mask, after occlusion and cropping by the image border.

The pipeline is split into stages so that a later version can interfere with one of them (for
example inject label errors between compositing and writing) without touching the others:

    sample_animals -> render_background, render_animal -> compose_scene -> annotate -> write

Each image gets its own random generator seeded from (seed, image index), so the output depends on
the seed only, never on how many worker processes drew it or in which order.

After rendering, `agent.data.label_errors` corrupts a known share of the labels: annotations.json holds
the noisy labels, clean.json the exact truth and errors.json the list of injected errors (its
schema is documented in `agent.data.label_errors`). The errors have a random stream of their own, so
the images are the same whatever the error rate.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.data.inject import inject_errors
from agent.data.label_errors import ERRORS_DESCRIPTION
from agent.errors import UserError
from sandbox.child_processes import new_processes_start_without_sigint

__all__ = [
    "CATEGORIES",
    "AnimalSpec",
    "RenderedAnimal",
    "annotate",
    "compose_scene",
    "generate_demo_dataset",
    "render_animal",
    "render_background",
    "render_scene",
    "sample_animals",
]

_CATEGORY_IDS: dict[str, int] = {"panda": 1, "bear": 2, "fox": 3}
CATEGORIES: tuple[dict[str, object], ...] = tuple(
    {"id": cid, "name": name, "supercategory": "animal"} for name, cid in _CATEGORY_IDS.items()
)

# annotations.json starts with this exact text. It is how we recognise a folder we wrote earlier
# and may overwrite, without parsing a possibly huge foreign file.
_MARKER = "metricsmith demo dataset"
_MARKER_PREFIX = '{"info": {"description": "' + _MARKER + '"'
_IMAGE_NAME = re.compile(r"^\d{6}\.jpg$")
_ERRORS_PREFIX = '{"version": 1, "description": "'
# The files we write next to images/, each recognised by how it starts; an interrupted run may
# also leave their .partial versions.
_OWN_FILES = {"annotations.json": _MARKER_PREFIX, "clean.json": _MARKER_PREFIX, "errors.json": _ERRORS_PREFIX}

_JPEG_QUALITY = 90
_MIN_SIDE = 64
# Below this many images the start-up of worker processes (each imports numpy and cv2) costs
# more than it saves.
_POOL_MIN_IMAGES = 128
# An animal whose visible part is smaller than either bound is dropped: a real annotator would
# not label a few stray pixels of fur, and such slivers make meaningless boxes.
_MIN_VISIBLE_PIXELS = 150
_MIN_VISIBLE_FRACTION = 0.15
# Longest side of an unrotated animal in pixels, before occlusion or cropping.
_SIZE_RANGE = (40.0, 250.0)
_MAX_ANIMALS = 6

Float32Array = NDArray[np.float32]
RGBImage = NDArray[np.uint8]
Polygon = NDArray[np.float64]

# ---------------------------------------------------------------------------------------------
# Animal shapes, in local units: the animal faces +x, y points down, the body is about one unit
# long. Parts are painted in list order, so later parts (head, eye patches) cover earlier ones.
# ---------------------------------------------------------------------------------------------


def _ellipse(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 40) -> Polygon:
    """Polygon approximating an ellipse; our own so that it keeps sub-pixel precision when scaled."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    a = math.radians(angle)
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)], axis=1)


def _poly(*points: tuple[float, float]) -> Polygon:
    return np.asarray(points, dtype=np.float64)


def _panda_parts() -> list[tuple[str, Polygon]]:
    legs = [_ellipse(x, y, 0.09, 0.17) for x, y in ((-0.32, 0.22), (-0.15, 0.26), (0.2, 0.26), (0.34, 0.22))]
    return [
        *(("black", leg) for leg in legs),
        ("white", _ellipse(0.0, 0.0, 0.5, 0.3)),
        # The black saddle over the shoulders is what makes a panda read as a panda from the side.
        ("black", _ellipse(0.22, 0.02, 0.12, 0.3, angle=10.0)),
        ("black", _ellipse(0.45, -0.41, 0.085, 0.085)),
        ("black", _ellipse(0.73, -0.37, 0.085, 0.085)),
        ("white", _ellipse(0.6, -0.2, 0.22, 0.2)),
        ("black", _ellipse(0.52, -0.22, 0.055, 0.08, angle=-30.0)),
        ("black", _ellipse(0.69, -0.22, 0.055, 0.08, angle=30.0)),
        ("white", _ellipse(0.53, -0.23, 0.018, 0.018, n=12)),
        ("white", _ellipse(0.68, -0.23, 0.018, 0.018, n=12)),
        ("black", _ellipse(0.61, -0.1, 0.045, 0.03)),
    ]


def _bear_parts() -> list[tuple[str, Polygon]]:
    legs = [_ellipse(x, y, 0.1, 0.18) for x, y in ((-0.33, 0.22), (-0.15, 0.26), (0.18, 0.26), (0.34, 0.22))]
    return [
        *(("dark", leg) for leg in legs),
        ("fur", _ellipse(0.0, 0.0, 0.52, 0.32)),
        ("fur", _ellipse(0.15, -0.14, 0.2, 0.19)),  # shoulder hump
        ("dark", _ellipse(0.5, -0.37, 0.07, 0.07)),
        ("dark", _ellipse(0.7, -0.35, 0.07, 0.07)),
        ("fur", _ellipse(0.6, -0.18, 0.2, 0.17)),
        ("muzzle", _ellipse(0.76, -0.12, 0.1, 0.07)),
        ("nose", _ellipse(0.84, -0.14, 0.035, 0.028, n=16)),
        ("nose", _ellipse(0.62, -0.24, 0.02, 0.02, n=12)),
    ]


def _fox_parts() -> list[tuple[str, Polygon]]:
    tail_centre, tail_angle = (-0.62, -0.06), 15.0
    a = math.radians(tail_angle)
    # The white tip sits at the far end of the tail, along the tail's own axis.
    tip = (tail_centre[0] - 0.27 * math.cos(a), tail_centre[1] - 0.27 * math.sin(a))
    legs = [_ellipse(x, y, 0.045, 0.16) for x, y in ((-0.25, 0.2), (-0.12, 0.22), (0.18, 0.22), (0.3, 0.2))]
    return [
        ("fur", _ellipse(*tail_centre, 0.34, 0.11, angle=tail_angle)),
        ("white", _ellipse(*tip, 0.09, 0.085, angle=tail_angle)),
        *(("dark", leg) for leg in legs),
        ("fur", _ellipse(0.0, 0.0, 0.42, 0.19)),
        ("white", _ellipse(0.34, 0.04, 0.1, 0.12)),
        ("fur", _poly((0.42, -0.28), (0.48, -0.5), (0.55, -0.3))),
        ("fur", _poly((0.53, -0.3), (0.61, -0.5), (0.65, -0.29))),
        ("fur", _poly((0.37, -0.3), (0.62, -0.33), (0.88, -0.14), (0.56, -0.05), (0.38, -0.1))),
        ("white", _poly((0.56, -0.07), (0.86, -0.13), (0.7, -0.04))),
        ("dark", _ellipse(0.87, -0.14, 0.025, 0.025, n=12)),
        ("dark", _ellipse(0.6, -0.2, 0.02, 0.02, n=12)),
    ]


_SHAPES: dict[int, list[tuple[str, Polygon]]] = {
    _CATEGORY_IDS["panda"]: _panda_parts(),
    _CATEGORY_IDS["bear"]: _bear_parts(),
    _CATEGORY_IDS["fox"]: _fox_parts(),
}


def _extent(parts: list[tuple[str, Polygon]]) -> tuple[NDArray[np.float64], float]:
    """Centre of the shape's bounding box and its longest side, to scale and rotate around."""
    points = np.concatenate([p for _, p in parts])
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (lo + hi) / 2.0, float((hi - lo).max())


_EXTENTS = {cid: _extent(parts) for cid, parts in _SHAPES.items()}


def _palette(category_id: int, rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """Per-animal colours (RGB): each individual differs a little, but keeps its species' look."""

    def jitter(rgb: tuple[float, float, float], scale: float, per_channel: float) -> tuple[float, ...]:
        s = rng.uniform(1.0 - scale, 1.0 + scale)
        return tuple(float(np.clip(c * s * rng.uniform(1 - per_channel, 1 + per_channel), 0, 255)) for c in rgb)

    if category_id == _CATEGORY_IDS["panda"]:
        # Grey levels with almost no per-channel jitter: a panda must stay black and white.
        white = float(rng.uniform(228, 248))
        black = float(rng.uniform(18, 38))
        return {"white": jitter((white,) * 3, 0.0, 0.01), "black": jitter((black,) * 3, 0.0, 0.04)}
    if category_id == _CATEGORY_IDS["bear"]:
        fur = jitter((118.0, 76.0, 44.0), 0.15, 0.06)
        return {
            "fur": fur,
            "dark": tuple(c * 0.6 for c in fur),
            "muzzle": jitter((190.0, 155.0, 115.0), 0.06, 0.03),
            "nose": (28.0, 22.0, 20.0),
        }
    fur = (float(rng.uniform(200, 235)), float(rng.uniform(85, 125)), float(rng.uniform(20, 45)))
    return {"fur": fur, "white": jitter((242.0, 238.0, 230.0), 0.03, 0.01), "dark": (45.0, 32.0, 28.0)}


# ---------------------------------------------------------------------------------------------
# Stage 1: what is in the scene.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnimalSpec:
    """One animal to draw: species, placement and colours, all decided before any pixel is drawn."""

    category_id: int
    center: tuple[float, float]
    size: float  # longest side of the unrotated animal, in pixels
    angle: float  # degrees
    flip: bool  # facing left instead of right
    stretch: tuple[float, float]  # mild per-animal proportions, so individuals differ
    palette: dict[str, tuple[float, float, float]]


def sample_animals(rng: np.random.Generator, width: int, height: int) -> list[AnimalSpec]:
    """Pick 1 to 6 animals in painting order (later ones are in front)."""
    specs: list[AnimalSpec] = []
    lo, hi = _SIZE_RANGE
    for _ in range(int(rng.integers(1, _MAX_ANIMALS + 1))):
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        # Log-uniform: small animals are as common as large ones, like objects at varied depth.
        size = min(math.exp(rng.uniform(math.log(lo), math.log(hi))), 0.8 * min(width, height))
        if specs and rng.random() < 0.35:
            # Deliberately close to the previous animal, so partial occlusion is common.
            prev = specs[-1]
            cx, cy = np.asarray(prev.center) + rng.normal(0.0, 0.35 * prev.size, 2)
        else:
            cx, cy = rng.uniform(0.0, width), rng.uniform(0.0, height)
        # Centres stay off the outer margin: large animals may be cut by the border, but even
        # the smallest keeps enough pixels in frame to be labelled.
        center = (float(np.clip(cx, 0.08 * width, 0.92 * width)), float(np.clip(cy, 0.1 * height, 0.9 * height)))
        specs.append(
            AnimalSpec(
                category_id=category_id,
                center=center,
                size=size,
                angle=float(rng.uniform(-15.0, 15.0)),
                flip=bool(rng.random() < 0.5),
                stretch=(float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.9, 1.1))),
                palette=_palette(category_id, rng),
            )
        )
    return specs


# ---------------------------------------------------------------------------------------------
# Stage 2: pixels.
# ---------------------------------------------------------------------------------------------

_SCENE_PALETTES: tuple[tuple[tuple[float, float, float], ...], ...] = (
    ((96, 140, 60), (140, 170, 80), (60, 100, 40), (170, 160, 90)),  # meadow
    ((40, 70, 35), (75, 95, 45), (95, 75, 50), (30, 50, 30)),  # forest floor
    ((110, 150, 70), (70, 120, 50), (160, 180, 100), (50, 80, 40)),  # bamboo
    ((190, 160, 100), (160, 130, 80), (210, 190, 130), (120, 110, 60)),  # savanna
    ((120, 115, 105), (150, 140, 125), (90, 88, 85), (170, 160, 140)),  # rocks
    ((215, 222, 232), (190, 200, 215), (235, 238, 242), (160, 170, 185)),  # snow
)


def _fractal_noise(rng: np.random.Generator, width: int, height: int, octaves: int = 4) -> Float32Array:
    """Smooth noise with roughly unit spread: coarse random grids upsampled and summed.

    The octaves are summed at a quarter of the requested size and upsampled once: OpenCV's cubic
    resize from a tiny grid straight to full size is surprisingly slow, and the result is just
    as smooth.
    """
    w, h = max(2, width // 4), max(2, height // 4)
    total = np.zeros((h, w), np.float32)
    for octave in range(octaves):
        cells = 2 ** (octave + 2)
        grid = rng.standard_normal((cells, max(2, cells * width // height)), dtype=np.float32)
        total += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) * np.float32(0.5**octave)
    return cv2.resize(total, (width, height), interpolation=cv2.INTER_LINEAR) / np.float32(1.3)


def render_background(rng: np.random.Generator, width: int, height: int) -> RGBImage:
    """An H×W×3 uint8 RGB background: gradient, fractal texture, stripes or foliage.

    Drawn in float at half resolution, then upsampled as uint8: a background is smooth anyway
    (it even reads as a shallow depth of field behind the sharp animals), and full-size float
    buffers cost more in fresh memory than in arithmetic. For the same reason every layer is a
    single-channel field, coloured per channel at the end: numpy is several times slower
    broadcasting over a trailing axis of 3 than on flat planes.
    """
    w, h = (width + 1) // 2, (height + 1) // 2
    palette = np.asarray(_SCENE_PALETTES[int(rng.integers(len(_SCENE_PALETTES)))], np.float32)
    palette = palette * rng.uniform(0.9, 1.1, (len(palette), 3)).astype(np.float32)
    c_a, c_b, c_c, c_d = palette[rng.permutation(len(palette))]

    a = rng.uniform(0.0, 2.0 * math.pi)
    xs = np.arange(w, dtype=np.float32) * np.float32(math.cos(a))
    ys = np.arange(h, dtype=np.float32) * np.float32(math.sin(a))
    gradient = ys[:, None] + xs[None, :]
    gradient = (gradient - gradient.min()) / np.float32(max(float(gradient.max() - gradient.min()), 1.0))

    noise = _fractal_noise(rng, w, h)
    texture = 1.0 + np.float32(rng.uniform(0.06, 0.2)) * noise

    stripes: Float32Array | None = None
    if rng.random() < 0.5:
        # Stripes (grass, bamboo, rock strata), warped by the noise so they are not ruler-straight.
        b = rng.uniform(0.0, math.pi)
        period = rng.uniform(4.0, 20.0)
        proj = (
            np.arange(h, dtype=np.float32)[:, None] * np.float32(math.sin(b))
            + np.arange(w, dtype=np.float32)[None, :] * np.float32(math.cos(b))
            + noise * np.float32(rng.uniform(0.0, 0.5) * period)
        )
        wave = 0.5 + 0.5 * np.sin(proj * np.float32(2.0 * math.pi / period))
        stripes = wave * np.float32(rng.uniform(0.2, 0.5))

    blobs: tuple[list[NDArray[np.uint8]], Float32Array] | None = None
    if rng.random() < 0.6:
        # Foliage-like blobs; the blurred alpha gives them soft, slightly dark rims.
        layer = np.zeros((h, w, 3), np.uint8)
        alpha8 = np.zeros((h, w), np.uint8)
        # All blob parameters drawn at once: per-blob generator calls were a third of this stage.
        n = int(rng.integers(15, 80))
        xs_, ys_ = rng.integers(0, w, n), rng.integers(0, h, n)
        ax_, ay_ = rng.integers(2, 20, n), rng.integers(2, 10, n)
        angles = rng.uniform(0.0, 180.0, n)
        colours = np.where((rng.random(n) < 0.5)[:, None], c_d, c_c) * rng.uniform(0.7, 1.2, (n, 1))
        colours = np.clip(colours, 0, 255).tolist()
        for i in range(n):
            centre, axes = (int(xs_[i]), int(ys_[i])), (int(ax_[i]), int(ay_[i]))
            cv2.ellipse(layer, centre, axes, float(angles[i]), 0, 360, colours[i], -1)
            cv2.ellipse(alpha8, centre, axes, float(angles[i]), 0, 360, 255, -1)
        alpha = cv2.GaussianBlur(alpha8, (0, 0), 0.8).astype(np.float32) * np.float32(0.85 / 255.0)
        blobs = (list(cv2.split(layer)), alpha)

    channels = []
    for k in range(3):
        channel = (c_a[k] + gradient * (c_b[k] - c_a[k])) * texture
        if stripes is not None:
            channel += stripes * (c_c[k] - channel)
        if blobs is not None:
            channel += blobs[1] * (blobs[0][k] - channel)
        channels.append(channel)
    half = np.clip(cv2.merge(channels), 0, 255).astype(np.uint8)
    return cv2.resize(half, (width, height), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class RenderedAnimal:
    """An animal's pixels on its own small canvas; (x0, y0) is the canvas corner in the scene."""

    category_id: int
    rgb: RGBImage  # h×w×3, meaningful only where mask is set
    mask: NDArray[np.bool_]  # h×w
    x0: int
    y0: int


def render_animal(spec: AnimalSpec, rng: np.random.Generator) -> RenderedAnimal:
    """Draw one animal on a tight canvas; the mask is exactly the set of pixels painted."""
    parts = _SHAPES[spec.category_id]
    centre, longest = _EXTENTS[spec.category_id]
    scale = spec.size / longest
    a = math.radians(spec.angle)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    sx = spec.stretch[0] * (-1.0 if spec.flip else 1.0)
    local_scale = np.array([sx, spec.stretch[1]])
    placed = [(key, ((poly - centre) * local_scale) @ rotation.T + spec.center) for key, poly in parts]

    points = np.concatenate([p for _, p in placed])
    x0, y0 = (int(v) - 1 for v in np.floor(points.min(axis=0)))
    x1, y1 = (int(v) + 2 for v in np.ceil(points.max(axis=0)))
    h, w = y1 - y0, x1 - x0
    rgb = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.uint8)
    for key, poly in placed:
        # Fixed-point vertices (4 fractional bits) and no anti-aliasing: the colour and the mask
        # are rasterised from identical geometry, so they cover exactly the same pixels.
        pts = np.round((poly - (x0, y0)) * 16.0).astype(np.int32)
        cv2.fillPoly(rgb, [pts], spec.palette[key], lineType=cv2.LINE_8, shift=4)
        cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_8, shift=4)

    # Fur texture and light from above, so animals are not flat stickers.
    fur = rng.standard_normal((max(2, h // 6), max(2, w // 6)), dtype=np.float32)
    fur = cv2.resize(fur, (w, h), interpolation=cv2.INTER_LINEAR)
    shade = np.linspace(1.06, 0.9, h, dtype=np.float32)[:, None] * (1.0 + np.float32(0.06) * fur)
    rgb = np.clip(cv2.multiply(rgb, cv2.merge([shade, shade, shade])), 0, 255).astype(np.uint8)
    return RenderedAnimal(spec.category_id, rgb, mask.astype(bool), x0, y0)


def _clip(animal: RenderedAnimal, width: int, height: int) -> tuple[slice, slice, slice, slice] | None:
    """(scene rows, scene cols, canvas rows, canvas cols) of the canvas part inside the frame."""
    h, w = animal.mask.shape
    sx0, sy0 = max(animal.x0, 0), max(animal.y0, 0)
    sx1, sy1 = min(animal.x0 + w, width), min(animal.y0 + h, height)
    if sx0 >= sx1 or sy0 >= sy1:
        return None
    return (
        slice(sy0, sy1),
        slice(sx0, sx1),
        slice(sy0 - animal.y0, sy1 - animal.y0),
        slice(sx0 - animal.x0, sx1 - animal.x0),
    )


def _label_map(animals: list[RenderedAnimal], width: int, height: int) -> NDArray[np.uint8]:
    """Which animal (1-based, in list order) owns each pixel after occlusion; 0 is background."""
    labels = np.zeros((height, width), np.uint8)
    for k, animal in enumerate(animals, start=1):
        clip = _clip(animal, width, height)
        if clip is not None:
            rows, cols, crows, ccols = clip
            labels[rows, cols][animal.mask[crows, ccols]] = k
    return labels


def _visible(animals: list[RenderedAnimal], width: int, height: int) -> list[RenderedAnimal]:
    """Drop animals that occlusion leaves as slivers.

    One pass suffices: removing an animal only uncovers pixels of the ones behind it, so no
    kept animal can become a sliver because of the removal.
    """
    counts = np.bincount(_label_map(animals, width, height).ravel(), minlength=len(animals) + 1)
    kept = []
    for k, animal in enumerate(animals, start=1):
        clip = _clip(animal, width, height)
        in_frame = 0 if clip is None else int(np.count_nonzero(animal.mask[clip[2], clip[3]]))
        if counts[k] >= _MIN_VISIBLE_PIXELS and counts[k] >= _MIN_VISIBLE_FRACTION * in_frame:
            kept.append(animal)
    # Every scene holds at least one animal; the front one is never occluded, and its centre
    # is inside the frame, so it always has visible pixels.
    return kept or animals[-1:]


def _shadow_map(animals: list[RenderedAnimal], rng: np.random.Generator, width: int, height: int) -> RGBImage:
    """Soft ground shadows under the animals: an H×W×3 brightness factor, 255 = no shadow.

    Drawn at quarter resolution: a shadow this blurred has no detail to lose, and a full-size
    blur with this radius would cost more than the rest of compositing.
    """
    small = np.full(((height + 3) // 4, (width + 3) // 4), 255, np.uint8)
    for animal in animals:
        h, w = animal.mask.shape
        centre = (int((animal.x0 + w / 2) / 4), int((animal.y0 + 0.9 * h) / 4))
        axes = (max(1, int(0.45 * w / 4)), max(1, int(0.1 * h / 4)))
        cv2.ellipse(small, centre, axes, 0.0, 0, 360, int(rng.uniform(140, 205)), -1)
    shade = cv2.resize(cv2.GaussianBlur(small, (0, 0), 1.5), (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.merge([shade, shade, shade])


def compose_scene(
    background: RGBImage, animals: list[RenderedAnimal], rng: np.random.Generator
) -> tuple[RGBImage, list[RenderedAnimal], NDArray[np.uint8]]:
    """Paste animals in order over the background and apply the per-image camera look.

    Returns the uint8 RGB image, the animals that stayed visible enough to be labelled, and the
    label map (pixel -> 1-based index into those animals) from which the ground truth is read.
    The background is not modified.
    """
    height, width = background.shape[:2]
    kept = _visible(animals, width, height)
    image = cv2.multiply(background, _shadow_map(kept, rng, width, height), scale=1.0 / 255.0)
    for animal in kept:
        clip = _clip(animal, width, height)
        if clip is not None:
            rows, cols, crows, ccols = clip
            np.copyto(image[rows, cols], animal.rgb[crows, ccols], where=animal.mask[crows, ccols, None])

    if rng.random() < 0.25:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.6, 1.3)))
    # Exposure differs per image, like photos from different cameras; kept mild so a panda's
    # white stays near-white and its black near-black. Sensor grain is uniform noise of the
    # chosen spread (std = 255·k/√12): it looks like Gaussian grain, but draws ~5× faster, and
    # OpenCV applies exposure, grain and the saturating cast to uint8 in a single pass.
    exposure = float(rng.uniform(0.75, 1.25))
    k = float(rng.uniform(1.5, 4.0)) * math.sqrt(12.0) / 255.0
    grain = rng.integers(0, 256, (height, width), dtype=np.uint8)
    pixels = cv2.addWeighted(image, exposure, cv2.merge([grain, grain, grain]), k, -127.5 * k, dtype=cv2.CV_8U)
    return pixels, kept, _label_map(kept, width, height)


# ---------------------------------------------------------------------------------------------
# Stage 3: ground truth from the label map.
# ---------------------------------------------------------------------------------------------


def _polygons(mask: NDArray[np.uint8], offset: tuple[int, int]) -> list[list[float]]:
    """COCO polygons (flat [x1, y1, x2, y2, ...] lists) of the mask's outer contours."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=offset)
    polygons = []
    for contour in contours:
        pts = contour.reshape(-1, 2).astype(np.float64)
        if len(pts) < 3 or cv2.contourArea(contour) < 1.0:
            # A one-pixel-wide piece has a degenerate contour; describe it by its pixel footprint
            # so the polygon stays valid COCO and still covers those pixels.
            (xa, ya), (xb, yb) = pts.min(axis=0) - 0.5, pts.max(axis=0) + 0.5
            pts = np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]])
        polygons.append([float(v) for v in pts.ravel()])
    return polygons


def annotate(animals: list[RenderedAnimal], labels: NDArray[np.uint8]) -> list[dict[str, object]]:
    """Annotations (without ids) from each animal's visible mask: tight box, area, polygons."""
    height, width = labels.shape
    annotations: list[dict[str, object]] = []
    for k, animal in enumerate(animals, start=1):
        clip = _clip(animal, width, height)
        if clip is None:
            continue
        rows, cols = clip[0], clip[1]
        visible = (labels[rows, cols] == k).astype(np.uint8)
        area = int(np.count_nonzero(visible))
        if area == 0:
            continue
        ys = np.flatnonzero(visible.any(axis=1))
        xs = np.flatnonzero(visible.any(axis=0))
        x, y = cols.start + int(xs[0]), rows.start + int(ys[0])
        annotations.append(
            {
                "category_id": animal.category_id,
                "bbox": [float(x), float(y), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)],
                "area": float(area),
                "iscrowd": 0,
                "segmentation": _polygons(visible, (cols.start, rows.start)),
            }
        )
    return annotations


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # Seeding from the pair keeps every image independent of the others and of the worker count.
    return np.random.default_rng([seed, index])


def render_scene(
    seed: int, index: int, width: int = 640, height: int = 480
) -> tuple[NDArray[np.uint8], list[dict[str, object]]]:
    """Image `index` (1-based) of the dataset for `seed`: RGB pixels and id-less annotations."""
    rng = _image_rng(seed, index)
    specs = sample_animals(rng, width, height)
    background = render_background(rng, width, height)
    animals = [render_animal(spec, rng) for spec in specs]
    image, kept, labels = compose_scene(background, animals, rng)
    return image, annotate(kept, labels)


# ---------------------------------------------------------------------------------------------
# Stage 4: files.
# ---------------------------------------------------------------------------------------------


def _image_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _write_new(path: Path, data: bytes) -> None:
    """Write a file we own, replacing rather than following anything already at that name.

    Unlinking first and creating exclusively means a stray symlink inside out_dir can never make
    us write outside it.
    """
    path.unlink(missing_ok=True)
    with open(path, "xb") as handle:
        handle.write(data)


def _write_scene(task: tuple[str, int, int, int, int]) -> list[dict[str, object]]:
    """Worker: render one image, write its JPEG, return its annotations."""
    images_dir, index, seed, width, height = task
    image, annotations = render_scene(seed, index, width, height)
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
    )
    if not ok:
        raise RuntimeError(f"OpenCV could not encode demo image {index}")
    _write_new(Path(images_dir) / _image_name(index), encoded.tobytes())
    return annotations


def _init_worker() -> None:
    # Parallelism comes from the pool; OpenCV's own threads would only oversubscribe the cores.
    cv2.setNumThreads(1)
    # Ctrl-C reaches the whole process group: the parent stops the pool, and a worker must not print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _render_in_processes(tasks: list[tuple[str, int, int, int, int]], workers: int) -> list[list[dict[str, object]]]:
    """`_write_scene` of the tasks in `workers` processes: the annotations of the first tasks, in order.

    All of them, unless a process was killed (the OOM killer, a signal): then those rendered before it,
    and the caller renders the rest. (multiprocessing.Pool waited forever for a killed process's images.)
    """
    # spawn, not fork: forking a process that may already run OpenCV or other threads can deadlock, and the
    # per-worker start-up is small next to the rendering work.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    size = max(1, len(tasks) // (workers * 8))
    rendered: list[list[dict[str, object]]] = []
    try:
        # The first submissions start the processes. They ignore a Ctrl-C from their first instruction, not
        # only from `_init_worker` on, after a second of imports (one pressed before printed their tracebacks).
        # Chunks of our own, not map(): map cancels what is left when interrupted, and Python 3.11's pool,
        # finding its processes killed after that, printed a traceback for each cancelled chunk.
        with new_processes_start_without_sigint():
            chunks = [pool.submit(_write_scenes, tasks[i : i + size]) for i in range(0, len(tasks), size)]
        for chunk in chunks:  # in task order; the chunks before a killed process's are kept
            rendered.extend(chunk.result())
    except BrokenProcessPool:
        pass  # a process was killed: the pool stops the others, and the caller renders what is left
    except BaseException:
        # A Ctrl-C or a failed image: the processes ignore SIGINT and would render their chunks to the end.
        # Python 3.11's executor has no public way to stop them (3.14's kill_workers): its table of processes.
        for process in dict(getattr(pool, "_processes", None) or {}).values():
            process.kill()
        raise
    finally:
        pool.shutdown(wait=True)  # every process has ended, so none writes an image after this returns
    return rendered


def _write_scenes(tasks: list[tuple[str, int, int, int, int]]) -> list[list[dict[str, object]]]:
    return [_write_scene(task) for task in tasks]


def _is_previous_demo(out_dir: Path) -> bool:
    """Whether out_dir holds what this module writes, complete or from an interrupted run."""
    annotations = out_dir / "annotations.json"
    if annotations.is_file() and not annotations.is_symlink():
        with open(annotations, "rb") as handle:
            return handle.read(len(_MARKER_PREFIX)).decode("utf-8", "replace") == _MARKER_PREFIX
    # An interrupted run leaves only images/ with our file names, maybe some of our json files
    # (annotations.json is renamed into place last), and maybe partial ones.
    for entry in out_dir.iterdir():
        if entry.name.endswith(".json.partial") and entry.name[: -len(".partial")] in _OWN_FILES and entry.is_file():
            continue
        if entry.name in _OWN_FILES:
            if entry.is_symlink() or not entry.is_file() or not _starts_with(entry, _OWN_FILES[entry.name]):
                return False
            continue
        if entry.name != "images" or entry.is_symlink() or not entry.is_dir():
            return False
        if not all(_IMAGE_NAME.match(f.name) and f.is_file() for f in entry.iterdir()):
            return False
    return True


def _starts_with(path: Path, prefix: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(prefix)).decode("utf-8", "replace") == prefix


def _prepare_out_dir(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"demo dataset: {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_previous_demo(out_dir):
        raise UserError(
            f"demo dataset: {out_dir} is not empty and does not hold an earlier demo dataset; "
            "choose a new or empty folder"
        )
    images_dir = out_dir / "images"
    if images_dir.is_symlink() or (images_dir.exists() and not images_dir.is_dir()):
        raise UserError(f"demo dataset: {images_dir} must be a plain folder")
    images_dir.mkdir(parents=True, exist_ok=True)
    return images_dir


def _check_arguments(n_images: int, seed: int, width: int, height: int, workers: int | None, error_rate: float) -> None:
    if n_images < 1:
        raise UserError(f"demo dataset: the number of images must be at least 1, not {n_images}")
    if seed < 0:
        raise UserError(f"demo dataset: the seed must be zero or positive, not {seed}")
    if width < _MIN_SIDE or height < _MIN_SIDE:
        raise UserError(f"demo dataset: images must be at least {_MIN_SIDE}×{_MIN_SIDE} px, not {width}×{height}")
    if workers is not None and workers < 1:
        raise UserError(f"demo dataset: workers must be at least 1, not {workers}")
    # Written as a negated range so that NaN is refused too.
    if not 0.0 <= error_rate < 1.0:
        raise UserError(f"demo dataset: the error rate must be at least 0 and below 1, not {error_rate}")


def boxes_only(annotations: list[dict[str, object]]) -> list[dict[str, object]]:
    """The annotations as a detection dataset holds them: a box, `area` = w·h, no segmentation.

    The noisy labels must not carry the true masks: a corrupted box next to its object's exact
    polygon (or an `area` counted from that mask) gives every error away to a metric that merely
    compares the two, which no real dataset allows.
    """
    stripped = []
    for annotation in annotations:
        box = {key: value for key, value in annotation.items() if key != "segmentation"}
        _, _, width, height = box["bbox"]  # type: ignore[misc]
        box["area"] = round(float(width) * float(height), 2)
        stripped.append(box)
    return stripped


def generate_demo_dataset(
    out_dir: Path,
    n_images: int = 64,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
    workers: int | None = None,
    error_rate: float = 0.2,
) -> Path:
    """Write a demo COCO dataset to out_dir/annotations.json and out_dir/images/*.jpg.

    Returns the path of annotations.json, which holds the NOISY labels: a share `error_rate` of
    the true annotations carries a known error (see `agent.data.label_errors`). clean.json, next to
    it, holds the true labels and errors.json the list of injected errors. The content depends
    only on (seed, width, height, error_rate) and, for how many images, on n_images; image k is
    the same whatever n_images, workers and error_rate are.
    Raises UserError if out_dir is non-empty and is not an earlier demo dataset.

    Large runs render in "spawn" worker processes, so a script that calls this at import time
    needs the usual `if __name__ == "__main__":` guard.
    """
    out_dir = Path(out_dir)
    _check_arguments(n_images, seed, width, height, workers, error_rate)
    images_dir = _prepare_out_dir(out_dir)

    tasks = [(str(images_dir), index, seed, width, height) for index in range(1, n_images + 1)]
    n_workers = min(workers if workers is not None else (os.cpu_count() or 1), n_images)
    per_image = _render_in_processes(tasks, n_workers) if n_workers > 1 and n_images >= _POOL_MIN_IMAGES else []
    # Whatever the processes did not render (all of it without them, the rest when one was killed), here.
    per_image.extend(_write_scene(task) for task in tasks[len(per_image) :])

    images, annotations = [], []
    for index, image_annotations in enumerate(per_image, start=1):
        images.append({"id": index, "file_name": _image_name(index), "width": width, "height": height})
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": index, **annotation})

    # Images left over from an earlier, larger demo run would be files no annotation refers to.
    for stale in images_dir.iterdir():
        if _IMAGE_NAME.match(stale.name) and int(stale.name[:6]) > n_images and not stale.is_dir():
            stale.unlink()

    categories = [dict(c) for c in CATEGORIES]
    # The noisy labels are a detection dataset (boxes only, area = w·h), corrupted by the same injection as
    # `metricsmith inject`: every box is written like the clean ones (whole pixels, ids and positions that
    # say nothing), so only the pixels give an error away.
    boxes = {"images": images, "annotations": boxes_only(annotations), "categories": categories}
    injection = inject_errors(boxes, rate=error_rate, seed=seed)
    noisy = injection.document["annotations"]
    errors = injection.errors.model_copy(update={"description": ERRORS_DESCRIPTION})

    def coco(annotations: list[dict[str, object]]) -> bytes:
        # The same info in both files, so that at error rate 0 they are byte for byte equal.
        info = {
            "description": _MARKER,
            "seed": seed,
            "generator": "metricsmith.agent.demo_data",
            "version": 1,
            "error_rate": error_rate,
        }
        document = {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        return json.dumps(document, separators=(", ", ": ")).encode("utf-8")

    # One error per line: small enough to read, and still one plain JSON object.
    header = errors.model_dump(mode="json", exclude={"errors"})
    lines = [json.dumps(record.model_dump(mode="json")) for record in errors.errors]
    errors_text = json.dumps(header)[:-1] + ', "errors": [\n' + ",\n".join(lines) + "\n]}\n"
    # annotations.json is written last: a complete annotations.json means a complete dataset.
    for name, data in (
        ("clean.json", coco(annotations)),
        ("errors.json", errors_text.encode("utf-8")),
        ("annotations.json", coco(noisy)),
    ):
        partial = out_dir / f"{name}.partial"
        _write_new(partial, data)
        os.replace(partial, out_dir / name)
    return out_dir / "annotations.json"
