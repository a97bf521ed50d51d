"""Known label errors and the `errors.json` file that lists them; the box geometry of each error type.

Errors are injected by `agent.data.inject` (`metricsmith inject`, and the demo generator
`agent.data.demo`, whose folder holds three files):

- `annotations.json`: the NOISY labels, valid COCO, annotation ids 1..M in list order. Boxes only:
  every `area` is the box's w·h and no annotation has a `segmentation`;
- `clean.json`: the true labels, exactly as drawn (polygons, and mask areas), same images and
  categories;
- `errors.json`: one record per injected error, described below.

`errors.json` schema (version 1), a JSON object:

    {
      "version": 1,                      # schema version; only 1 exists
      "description": "metricsmith demo dataset label errors",   # optional, informative
      "seed": 0,                         # the injection seed; null if unknown
      "error_rate": 0.2,                 # share of clean annotations that got an error, 0 <= r < 1
      "errors": [ErrorRecord, ...]       # sorted by image_id, then annotation_id
    }

Each ErrorRecord is an object; boxes are COCO `[x, y, w, h]` in pixels with w, h > 0:

    type                   one of "swap", "shift", "loose", "tight", "spurious", "duplicate", "drop"
    image_id               the image, the same id in annotations.json and clean.json
    annotation_id          id of the noisy annotation in annotations.json; null for "drop"
    clean_annotation_id    id of the true annotation in clean.json; null for "spurious"
    category_id            class of the noisy annotation (for "drop": of the removed annotation)
    original_category_id   true class; null for "spurious"
    bbox                   the noisy box; null for "drop"
    original_bbox          the true box; null for "spurious"

What each type means is in `agent.data.inject`. The geometry here:

- `shifted_box`: moved and resized (w, h and the centre drawn from normal distributions around the
  truth with a spread of 0.15·w or 0.15·h, redrawn until the IoU with the truth is in [0.4, 0.7)),
  clipped to the image, w and h > 1.
- `loosened_box`: grown around its centre so that its AREA is 1.3 to 2 times the true area (factor
  uniform in [1.3, 2.0]; each side grows by its square root), clipped to the image; it always
  contains the true box.
- `duplicated_box`: each side of the true box moved by up to ±5% of its w or h.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.data.json_files import load_json_model

__all__ = [
    "ERROR_TYPES",
    "ErrorRecord",
    "ErrorsFile",
    "box_iou",
    "duplicated_box",
    "load_errors",
    "loosened_box",
    "shifted_box",
]

ErrorType = Literal["swap", "shift", "loose", "tight", "spurious", "duplicate", "drop"]
ERROR_TYPES: tuple[ErrorType, ...] = ("swap", "shift", "loose", "tight", "spurious", "duplicate", "drop")
ERRORS_DESCRIPTION = "metricsmith demo dataset label errors"

_SHIFT_IOU = (0.4, 0.7)
# Accepted IoUs stay this far inside [0.4, 0.7), so any other IoU implementation, rounding its
# floats differently, still finds them in range.
_IOU_MARGIN = 1e-6
_SHIFT_SPREAD = 0.15
_SHIFT_BATCH = 64
_SHIFT_BATCHES = 32
_LOOSE_AREA_FACTOR = (1.3, 2.0)
_DUPLICATE_JITTER = 0.05
# Geometry is computed to 1/100 px; `agent.data.inject` then writes it as the dataset writes its boxes.
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
    return load_json_model(path, ErrorsFile, "label-errors")


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


def shifted_box(box: list[float], width: int, height: int, rng: np.random.Generator) -> list[float]:
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


def loosened_box(box: list[float], width: int, height: int, rng: np.random.Generator) -> list[float]:
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


def duplicated_box(box: list[float], width: int, height: int, rng: np.random.Generator) -> list[float]:
    x, y, w, h = box
    dx1, dx2 = rng.uniform(-_DUPLICATE_JITTER, _DUPLICATE_JITTER, 2) * w
    dy1, dy2 = rng.uniform(-_DUPLICATE_JITTER, _DUPLICATE_JITTER, 2) * h
    return [float(v) for v in _corners_to_box(x + dx1, y + dy1, x + w + dx2, y + h + dy2, width, height)]
