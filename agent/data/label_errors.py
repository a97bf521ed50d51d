"""Known label errors injected into the demo dataset, and the `errors.json` file that lists them.

The demo generator (`agent.data.demo`) draws exact ground truth, then corrupts a known share of it
so that data-quality metrics can be scored against the truth. A demo folder holds three files:

- `annotations.json`: the NOISY labels, valid COCO, annotation ids 1..M without gaps. Boxes only:
  every `area` is the box's w·h and no annotation has a `segmentation`, so nothing but the pixels
  tells a corrupted box from a true one;
- `clean.json`: the true labels, exactly as drawn (polygons, and mask areas), same images and
  categories;
- `errors.json`: one record per injected error, described below.

`errors.json` schema (version 1), a JSON object:

    {
      "version": 1,                      # schema version; only 1 exists
      "description": "metricsmith demo dataset label errors",   # optional, informative
      "seed": 0,                         # the dataset seed; null if unknown
      "error_rate": 0.2,                 # share of clean annotations that got an error, 0 <= r < 1
      "errors": [ErrorRecord, ...]       # sorted by image_id, then annotation_id
    }

Each ErrorRecord is an object; boxes are COCO `[x, y, w, h]` in pixels with w, h > 0:

    type                   one of "swap", "shift", "loose", "spurious", "duplicate", "drop"
    image_id               the image, the same id in annotations.json and clean.json
    annotation_id          id of the noisy annotation in annotations.json; null for "drop"
    clean_annotation_id    id of the true annotation in clean.json; null for "spurious"
    category_id            class of the noisy annotation (for "drop": of the removed annotation)
    original_category_id   true class; null for "spurious"
    bbox                   the noisy box; null for "drop"
    original_bbox          the true box; null for "spurious"

What each type means (the noisy annotation is the one `annotation_id` points at):

- `swap`: the class was changed to another class, drawn uniformly among the other ones; the box
  and segmentation are untouched.
- `shift`: the box was moved and resized (w, h and the centre drawn from normal distributions
  around the truth with a spread of 0.15·w or 0.15·h, redrawn until the IoU with the truth is in
  [0.4, 0.7)), clipped to the image, w and h > 1.
- `loose`: the box was grown around its centre so that its AREA is 1.3 to 2 times the true area
  (factor uniform in [1.3, 2.0]; each side grows by its square root), then clipped to the image.
  It always contains the true box.
- `spurious`: a box that matches no object: the box of an annotation in ANOTHER image, copied at
  the same coordinates, placed only where its IoU with every true box of this image (and every
  earlier spurious box) is at most 0.1, with a class drawn uniformly among all classes.
- `duplicate`: a second annotation on the same object: each side of the true box moved by up to
  ±5% of its w or h, same class. The true annotation stays as it was.
- `drop`: the annotation was removed; `original_bbox` and `category_id` describe it. An image
  may be left with no annotation at all, as in real datasets.

Each true annotation gets at most one error. With N true annotations and rate r, each of the six
types gets round(r·N/6) errors, with Python's `round` (halves go to the even number: 2.5 -> 2).
Two cases inject fewer: when the five types that consume a true annotation would need more
annotations than exist, each type is cut to N // 5; and a spurious box is abandoned when no
placement is found within a bounded number of draws (only plausible for a single image or for
extremely crowded ones). The records always list exactly what was injected.

`inject_label_errors` itself gives boxes whose geometry changed (shift, loose, spurious,
duplicate) `area` = w·h and no `segmentation`, since the true polygon no longer matches them;
swapped and untouched annotations keep theirs. The demo generator then strips every annotation of
annotations.json down to its box (`agent.data.demo.boxes_only`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.data.coco import describe_json_error
from agent.errors import UserError

__all__ = [
    "ERROR_TYPES",
    "ErrorRecord",
    "ErrorsFile",
    "box_iou",
    "duplicated_box",
    "inject_label_errors",
    "load_errors",
    "loosened_box",
    "shifted_box",
]

# `tight` comes from `agent.data.inject` only; the demo injects the six of ERROR_TYPES.
ErrorType = Literal["swap", "shift", "loose", "tight", "spurious", "duplicate", "drop"]
ERROR_TYPES: tuple[ErrorType, ...] = ("swap", "shift", "loose", "spurious", "duplicate", "drop")
ERRORS_DESCRIPTION = "metricsmith demo dataset label errors"

# The error stream is seeded from (seed, this constant): the bytes of "errors" as an integer, since
# numpy seeds take integers. A stream of its own keeps the rendered images independent of the rate.
_ERRORS_STREAM = int.from_bytes(b"errors", "big")
_SHIFT_IOU = (0.4, 0.7)
# Accepted IoUs stay this far inside [0.4, 0.7), so any other IoU implementation, rounding its
# floats differently, still finds them in range.
_IOU_MARGIN = 1e-6
_SHIFT_SPREAD = 0.15
_SHIFT_BATCH = 64
_SHIFT_BATCHES = 32
_LOOSE_AREA_FACTOR = (1.3, 2.0)
_DUPLICATE_JITTER = 0.05
_SPURIOUS_MAX_IOU = 0.1
_SPURIOUS_TRIES = 1000
# Noisy coordinates are rounded to 1/100 px: readable files, and far finer than any metric cares.
_DECIMALS = 2

_Box = tuple[
    Annotated[float, Field(allow_inf_nan=False)],
    Annotated[float, Field(allow_inf_nan=False)],
    Annotated[float, Field(allow_inf_nan=False, gt=0)],
    Annotated[float, Field(allow_inf_nan=False, gt=0)],
]
_Id = Annotated[int, Field(gt=0)]


class ErrorRecord(BaseModel):
    """One injected error; see the module docstring for the meaning of each field per type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ErrorType
    image_id: _Id
    annotation_id: _Id | None
    clean_annotation_id: _Id | None
    category_id: _Id
    original_category_id: _Id | None
    bbox: _Box | None
    original_bbox: _Box | None

    @model_validator(mode="after")
    def _fields_match_type(self) -> ErrorRecord:
        # A drop has no noisy annotation and a spurious box no true one; every other type has both.
        noisy_absent = self.type == "drop"
        truth_absent = self.type == "spurious"
        for name, absent in (
            ("annotation_id", noisy_absent),
            ("bbox", noisy_absent),
            ("clean_annotation_id", truth_absent),
            ("original_bbox", truth_absent),
            ("original_category_id", truth_absent),
        ):
            value = getattr(self, name)
            if absent and value is not None:
                raise ValueError(f"{name} must be null for a {self.type} error")
            if not absent and value is None:
                raise ValueError(f"{name} is required for a {self.type} error")
        return self


class ErrorsFile(BaseModel):
    """The content of errors.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    description: str = ERRORS_DESCRIPTION
    seed: int | None
    error_rate: Annotated[float, Field(ge=0.0, lt=1.0)]
    errors: list[ErrorRecord]


def load_errors(path: Path) -> ErrorsFile:
    """Read and check an errors.json file; raises UserError naming the file if it is unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"{path}: cannot read this label-errors file: {reason}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON: {describe_json_error(exc)}") from exc
    try:
        return ErrorsFile.model_validate(document)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UserError(f"{path}: not a valid label-errors file: {shown}") from exc


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "top level"
    return f"{where}: {error['msg']}"


# ---------------------------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------------------------


def box_iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    """Intersection over union of two COCO [x, y, w, h] boxes; 0 when both are empty."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _corners_to_box(
    x1: float, y1: float, x2: float, y2: float, width: int, height: int
) -> tuple[float, float, float, float]:
    """Rounded, clipped [x, y, w, h] from corner coordinates."""
    x1, x2 = (min(max(round(v, _DECIMALS), 0.0), float(width)) for v in (x1, x2))
    y1, y2 = (min(max(round(v, _DECIMALS), 0.0), float(height)) for v in (y1, y2))
    return x1, y1, round(x2 - x1, _DECIMALS), round(y2 - y1, _DECIMALS)


def _shifted(box: list[float], width: int, height: int, rng: np.random.Generator) -> list[float]:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    lo, hi = _SHIFT_IOU[0] + _IOU_MARGIN, _SHIFT_IOU[1] - _IOU_MARGIN
    for _ in range(_SHIFT_BATCHES):
        # Drawn in batches: one generator call per batch instead of four per candidate.
        nw = rng.normal(w, _SHIFT_SPREAD * w, _SHIFT_BATCH)
        nh = rng.normal(h, _SHIFT_SPREAD * h, _SHIFT_BATCH)
        ncx = rng.normal(cx, _SHIFT_SPREAD * w, _SHIFT_BATCH)
        ncy = rng.normal(cy, _SHIFT_SPREAD * h, _SHIFT_BATCH)
        for k in range(_SHIFT_BATCH):
            if nw[k] <= 0 or nh[k] <= 0:
                continue
            candidate = _corners_to_box(
                ncx[k] - nw[k] / 2, ncy[k] - nh[k] / 2, ncx[k] + nw[k] / 2, ncy[k] + nh[k] / 2, width, height
            )
            if candidate[2] > 1 and candidate[3] > 1 and lo <= box_iou(candidate, box) <= hi:
                return [float(v) for v in candidate]
    # Practically unreachable (about a third of the draws qualify), but the loop must end: a box
    # inside the truth, its longer side cut to 55%, has an IoU of 0.55 by construction.
    if w >= h:
        return [float(v) for v in _corners_to_box(cx - 0.275 * w, y, cx + 0.275 * w, y + h, width, height)]
    return [float(v) for v in _corners_to_box(x, cy - 0.275 * h, x + w, cy + 0.275 * h, width, height)]


def _loosened(box: list[float], width: int, height: int, rng: np.random.Generator) -> list[float]:
    x, y, w, h = box
    # The factor applies to the area, so each side grows by its square root.
    grow = math.sqrt(rng.uniform(*_LOOSE_AREA_FACTOR))
    cx, cy = x + w / 2, y + h / 2
    # min/max with the true corners guard against rounding eating into the true box.
    x1, y1, bw, bh = _corners_to_box(
        min(cx - grow * w / 2, x),
        min(cy - grow * h / 2, y),
        max(cx + grow * w / 2, x + w),
        max(cy + grow * h / 2, y + h),
        width,
        height,
    )
    return [x1, y1, bw, bh]


def _duplicated(box: list[float], width: int, height: int, rng: np.random.Generator) -> list[float]:
    x, y, w, h = box
    dx1, dx2 = rng.uniform(-_DUPLICATE_JITTER, _DUPLICATE_JITTER, 2) * w
    dy1, dy2 = rng.uniform(-_DUPLICATE_JITTER, _DUPLICATE_JITTER, 2) * h
    return [float(v) for v in _corners_to_box(x + dx1, y + dy1, x + w + dx2, y + h + dy2, width, height)]


# The same geometry for `agent.data.inject`, which formats the result like the dataset's own boxes.
shifted_box, loosened_box, duplicated_box = _shifted, _loosened, _duplicated


# ---------------------------------------------------------------------------------------------
# Injection.
# ---------------------------------------------------------------------------------------------


def error_counts(n_annotations: int, error_rate: float) -> int:
    """How many errors of each type are requested for n true annotations (see module docstring)."""
    per_type = round(error_rate * n_annotations / len(ERROR_TYPES))
    # Five of the six types each consume a distinct true annotation.
    return min(per_type, n_annotations // (len(ERROR_TYPES) - 1))


def inject_label_errors(
    images: list[dict[str, Any]],
    clean: list[dict[str, Any]],
    category_ids: list[int],
    seed: int,
    error_rate: float,
) -> tuple[list[dict[str, Any]], ErrorsFile]:
    """Noisy annotations (ids 1..M) and the record of every error injected into `clean`.

    `images` and `clean` are COCO records (clean ids may be any unique integers); `clean` is not
    modified. The result depends only on the inputs, `seed` and `error_rate`.
    """
    rng = np.random.default_rng([seed, _ERRORS_STREAM])
    sizes = {int(img["id"]): (int(img["width"]), int(img["height"])) for img in images}
    per_type = error_counts(len(clean), error_rate)

    # Which true annotation gets which error: one permutation cut into consecutive blocks.
    order = rng.permutation(len(clean))
    consuming = [t for t in ERROR_TYPES if t != "spurious"]
    chosen = {t: sorted(order[i * per_type : (i + 1) * per_type].tolist()) for i, t in enumerate(consuming)}

    replaced: dict[int, dict[str, Any] | None] = {}  # clean index -> noisy annotation, None = dropped
    added: dict[int, list[dict[str, Any]]] = {}  # image id -> new annotations
    pending: list[tuple[dict[str, Any], dict[str, Any] | None]] = []  # (record fields, noisy annotation)

    def truth_fields(ann: dict[str, Any]) -> dict[str, Any]:
        return {
            "image_id": ann["image_id"],
            "clean_annotation_id": ann["id"],
            "original_category_id": ann["category_id"],
            "original_bbox": list(ann["bbox"]),
        }

    def box_annotation(image_id: int, category_id: int, bbox: list[float]) -> dict[str, Any]:
        # No segmentation: the true polygon does not match a changed box.
        return {
            "image_id": image_id,
            "category_id": category_id,
            "bbox": bbox,
            "area": round(bbox[2] * bbox[3], _DECIMALS),
            "iscrowd": 0,
        }

    for index in chosen["swap"]:
        ann = clean[index]
        others = [c for c in category_ids if c != ann["category_id"]]
        noisy = {key: value for key, value in ann.items() if key != "id"}
        noisy["category_id"] = int(others[int(rng.integers(len(others)))])
        replaced[index] = noisy
        pending.append(({"type": "swap", **truth_fields(ann)}, noisy))

    for kind, corrupt in (("shift", _shifted), ("loose", _loosened)):
        for index in chosen[kind]:
            ann = clean[index]
            bbox = corrupt(list(ann["bbox"]), *sizes[ann["image_id"]], rng)
            noisy = box_annotation(ann["image_id"], ann["category_id"], bbox)
            replaced[index] = noisy
            pending.append(({"type": kind, **truth_fields(ann)}, noisy))

    for index in chosen["duplicate"]:
        ann = clean[index]
        bbox = _duplicated(list(ann["bbox"]), *sizes[ann["image_id"]], rng)
        noisy = box_annotation(ann["image_id"], ann["category_id"], bbox)
        added.setdefault(ann["image_id"], []).append(noisy)
        pending.append(({"type": "duplicate", **truth_fields(ann)}, noisy))

    for index in chosen["drop"]:
        replaced[index] = None
        pending.append(({"type": "drop", **truth_fields(clean[index])}, None))

    _add_spurious(images, clean, category_ids, per_type, rng, added, pending, box_annotation)

    # Assemble per image: surviving annotations in their original order, and each new one at a
    # random position, so that the order of a file does not give the errors away.
    by_image: dict[int, list[dict[str, Any]]] = {int(img["id"]): [] for img in images}
    for index, ann in enumerate(clean):
        noisy = replaced.get(index, {key: value for key, value in ann.items() if key != "id"})
        if noisy is not None:
            by_image[ann["image_id"]].append(noisy)
    for image_id, extra in added.items():
        for noisy in extra:
            slot = int(rng.integers(len(by_image[image_id]) + 1))
            by_image[image_id].insert(slot, noisy)

    annotations: list[dict[str, Any]] = []
    noisy_id: dict[int, int] = {}  # id() of a noisy dict -> its annotation id
    for image_anns in by_image.values():
        for noisy in image_anns:
            noisy_id[id(noisy)] = len(annotations) + 1
            annotations.append({"id": len(annotations) + 1, **noisy})

    records = []
    for fields, noisy in pending:
        records.append(
            ErrorRecord(
                **{
                    "clean_annotation_id": None,
                    "original_category_id": None,
                    "original_bbox": None,
                    **fields,
                    "annotation_id": None if noisy is None else noisy_id[id(noisy)],
                    "category_id": fields["original_category_id"] if noisy is None else noisy["category_id"],
                    "bbox": None if noisy is None else noisy["bbox"],
                }
            )
        )
    records.sort(key=lambda r: (r.image_id, r.annotation_id or 0, r.clean_annotation_id or 0))
    return annotations, ErrorsFile(seed=seed, error_rate=error_rate, errors=records)


def _add_spurious(
    images: list[dict[str, Any]],
    clean: list[dict[str, Any]],
    category_ids: list[int],
    count: int,
    rng: np.random.Generator,
    added: dict[int, list[dict[str, Any]]],
    pending: list[tuple[dict[str, Any], dict[str, Any] | None]],
    box_annotation: Any,
) -> None:
    """Copy boxes of other images onto free space; fewer than `count` if no place is found."""
    truth: dict[int, list[list[float]]] = {}
    for ann in clean:
        truth.setdefault(ann["image_id"], []).append(ann["bbox"])
    image_ids = [int(img["id"]) for img in images]
    sizes = {int(img["id"]): (int(img["width"]), int(img["height"])) for img in images}
    placed: dict[int, list[list[float]]] = {}
    tries = 0
    for _ in range(count):
        while tries < _SPURIOUS_TRIES and clean:
            tries += 1
            # A new target and a new source on every draw: a crowded image does not block the rest.
            target = image_ids[int(rng.integers(len(image_ids)))]
            source = clean[int(rng.integers(len(clean)))]
            if source["image_id"] == target:
                continue
            width, height = sizes[target]
            x, y, w, h = source["bbox"]
            bbox = [float(v) for v in _corners_to_box(x, y, x + w, y + h, width, height)]
            if bbox[2] <= 1 or bbox[3] <= 1:
                continue  # the source image was larger than this one
            blockers = truth.get(target, []) + placed.get(target, [])
            if any(box_iou(bbox, other) > _SPURIOUS_MAX_IOU for other in blockers):
                continue
            category_id = int(category_ids[int(rng.integers(len(category_ids)))])
            noisy = box_annotation(target, category_id, bbox)
            added.setdefault(target, []).append(noisy)
            placed.setdefault(target, []).append(bbox)
            pending.append(({"type": "spurious", "image_id": target}, noisy))
            break
