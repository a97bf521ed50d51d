"""Known label errors written into a copy of any COCO dataset, leaving no trace in its format.

`inject_errors` takes a COCO document as parsed JSON (already checked by `agent.data.coco`) and
returns a noisy copy plus the `errors.json` records (`agent.data.label_errors`) of what it changed.
A metric can then be measured on the user's own data: the only honest difference between a
corrupted annotation and a clean one is its geometry or class. Everything else is made alike:

- Coordinates: a new or changed box is written the way the dataset writes boxes: Python ints where
  the file has ints, else floats rounded to the most decimals its coordinates show (a float rounded
  to 2 places shows fewer when it ends in 0), else, for unrounded floats, not rounded. A file of
  whole-pixel boxes stays whole-pixel.
- `area`: the dataset's own rule, written to its areas' precision. Where every area is w·h, a
  changed box gets w·h; where areas come from masks (smaller than w·h), a changed box keeps its
  original area-to-w·h ratio (a new box borrows the ratio of the real box it copies). Annotations
  without `area` stay without it.
- Segmentations: a changed box can't keep a polygon that no longer matches it, and removing only
  its polygon would give it away, so the copy has no `segmentation` on any annotation.
- Keys: a new annotation has the keys and extra fields of the real annotation it copies.
- Ids and order: new annotations are inserted at random places among their image's annotations,
  and every annotation of the copy is then numbered 1..M in list order, so neither an id nor a
  position says which are new. `id_map` gives each copied annotation's original id.
- Crowd annotations (`iscrowd` 1) are never corrupted nor copied.

The error types, and how large each one is (relative to the box, or to its class here):

    swap       the class is changed to another class that occurs in the dataset
    shift      moved and resized: IoU with the truth in [0.4, 0.7) before it is written in the dataset's
               number format (whole pixels can move it slightly)
    loose      grown around its centre to 1.3-2x the area, containing the truth
    tight      shrunk around its centre to 0.5-0.77x the area (the inverse of loose), cutting part
               of the object off
    spurious   a box sized like a real box of its class, on background: IoU <= 0.1 with every box
               of its image; its class is drawn with the dataset's class frequencies
    duplicate  a second box on the same object, each side moved by up to 5%, same class
    drop       the annotation is removed

Each annotation gets at most one error; with N corruptible annotations, rate r and T types, each
type gets round(r·N/T). A single-class dataset gets no swaps (`notes` says so). The result depends
only on the document, the rate, the types and the seed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.data.label_errors import (
    ERROR_TYPES,
    ErrorRecord,
    ErrorsFile,
    box_iou,
    duplicated_box,
    loosened_box,
    shifted_box,
)
from agent.errors import UserError

__all__ = ["INJECT_TYPES", "Injection", "Injector", "errors_per_type", "inject_errors"]

INJECT_TYPES = ERROR_TYPES
INJECT_DESCRIPTION = "metricsmith injected label errors"
_TIGHT_AREA_FACTOR = (1 / 2.0, 1 / 1.3)
_SPURIOUS_MAX_IOU = 0.1
_SPURIOUS_TRIES = 200
_SHIFT_REDRAWS = 20
# A float showing this many decimals or more was not rounded by its exporter: neither are ours.
_FULL_PRECISION = 9


@dataclass
class Injection:
    """The noisy copy, the record of its errors, each copied annotation's original id, and notes for the user."""

    document: dict[str, Any]
    errors: ErrorsFile
    id_map: dict[int, int]  # noisy annotation id -> original id (new annotations are absent)
    notes: list[str] = field(default_factory=list)


def _decimals(value: Any) -> int | None:
    """None for a Python int; else how many decimals the float shows (trailing zeros dropped)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    text = repr(float(value))
    if "e" in text or "E" in text:
        return _FULL_PRECISION
    return len(text.partition(".")[2].rstrip("0"))


@dataclass(frozen=True)
class _Precision:
    """How a dataset writes one kind of number: Python ints, or floats rounded to `decimals` (None: not rounded)."""

    ints: bool
    decimals: int | None

    @classmethod
    def of(cls, values: Sequence[Any]) -> _Precision:
        shown = [_decimals(v) for v in values]
        if shown and all(d is None for d in shown):
            return cls(ints=True, decimals=0)
        # A float rounded to 2 places shows fewer when it ends in 0: the most shown is the rounding.
        most = max((d for d in shown if d is not None), default=0)
        return cls(ints=False, decimals=None if most >= _FULL_PRECISION else most)

    def write(self, value: float) -> int | float:
        if self.ints:
            return round(value)
        return float(value) if self.decimals is None else float(round(value, self.decimals))

    @property
    def step(self) -> float:
        """The smallest positive number this format writes."""
        return 1.0 if self.ints else 10.0 ** -(self.decimals if self.decimals is not None else _FULL_PRECISION)


@dataclass(frozen=True)
class _Format:
    """How this dataset writes boxes and areas, learned from its clean annotations."""

    coordinates: _Precision
    areas: _Precision
    box_areas: bool  # every area is w·h, as written to the areas' precision

    def bbox(self, box: Sequence[float], width: int, height: int, rounding: str = "nearest") -> list[int | float]:
        """`box` written as the dataset writes boxes. `rounding` "out" never cuts into the box (so a loose box
        still contains its truth), "in" never grows it (a tight box stays inside its truth)."""
        x1, y1 = float(box[0]), float(box[1])
        x2, y2 = x1 + float(box[2]), y1 + float(box[3])
        if rounding != "nearest" and self.coordinates.decimals is not None:
            scale = 10.0 ** (0 if self.coordinates.ints else self.coordinates.decimals)
            grow, shrink = (math.floor, math.ceil) if rounding == "out" else (math.ceil, math.floor)
            x1, y1 = grow(round(x1 * scale, 6)) / scale, grow(round(y1 * scale, 6)) / scale
            x2, y2 = shrink(round(x2 * scale, 6)) / scale, shrink(round(y2 * scale, 6)) / scale
        # Rounding must not leave the image nor collapse the box: the smallest step the format allows.
        x, y = self.coordinates.write(max(x1, 0.0)), self.coordinates.write(max(y1, 0.0))
        w = self.coordinates.write(max(min(x2, width) - x, self.coordinates.step))
        h = self.coordinates.write(max(min(y2, height) - y, self.coordinates.step))
        return [x, y, w, h]

    def area(self, bbox: Sequence[float], template: dict[str, Any]) -> Any:
        """The area `template`'s rule gives `bbox`: w·h, or w·h times the template's own area-to-w·h ratio."""
        original = template.get("area")
        if original is None:
            return None
        tw, th = (float(v) for v in template["bbox"][2:])
        ratio = 1.0 if self.box_areas or tw * th <= 0 else float(original) / (tw * th)
        return self.areas.write(float(bbox[2]) * float(bbox[3]) * ratio)


def _learn_format(annotations: list[dict[str, Any]]) -> _Format:
    coordinates = _Precision.of([v for a in annotations for v in a["bbox"]])
    with_area = [a for a in annotations if a.get("area") is not None]
    areas = _Precision.of([a["area"] for a in with_area])
    # w·h written to the areas' precision can differ from w·h by half its last step.
    slack = 0.5 * areas.step + 1e-9
    box_areas = all(
        abs(float(a["area"]) - float(a["bbox"][2]) * float(a["bbox"][3])) <= slack * (1 + 1e-9) for a in with_area
    )
    return _Format(coordinates=coordinates, areas=areas, box_areas=box_areas)


def _tightened(box: Sequence[float], rng: np.random.Generator) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    shrink = math.sqrt(rng.uniform(*_TIGHT_AREA_FACTOR))
    cx, cy = x + w / 2, y + h / 2
    return [cx - shrink * w / 2, cy - shrink * h / 2, shrink * w, shrink * h]


def _json_copy(value: Any) -> Any:
    """A copy of parsed JSON, new dicts and lists all the way down (the rest is immutable); deepcopy is 5x slower."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


def _is_crowd(annotation: dict[str, Any]) -> bool:
    return bool(annotation.get("iscrowd", 0))


class Injector:
    """Noisy copies of one COCO document, any number of them; `document` is not modified.

    A copy's annotations are dicts of its own, but the values inside them that no error changed (a box's
    coordinate list, an extra field's dict) are `document`'s own objects: neither may be changed in place.
    A deep copy of every annotation cost more than the rest of an injection (the learned metrics make six
    to twenty-four copies of a dataset per run).

    What every copy needs to know of the document (its images, which annotations may be corrupted,
    its number format, its classes) is learned once, here, rather than once per copy: selftest draws
    a copy per seed, and the learned metrics a copy per error type. The document must not change
    while the injector is in use.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._images = {int(image["id"]): image for image in document["images"]}
        self._corruptible = [index for index, a in enumerate(document["annotations"]) if not _is_crowd(a)]
        self._format = _learn_format([document["annotations"][i] for i in self._corruptible])
        self._present = Counter(int(document["annotations"][i]["category_id"]) for i in self._corruptible)

    def inject(
        self, *, rate: float = 0.2, seed: int = 0, types: Sequence[str] = INJECT_TYPES, stream: str = "inject"
    ) -> Injection:
        """A noisy copy of the document with known errors.

        `stream` names the random stream the seed is drawn in: `metricsmith inject` and `selftest` use the
        default, and the learned metrics their own (`agent.metrics.learned`), so that whatever seeds the
        user picks, no training copy is ever drawn like the copy it is measured on.
        """
        unknown = [t for t in types if t not in INJECT_TYPES]
        if unknown:
            raise UserError(f"unknown error type {unknown[0]!r}; the types are {', '.join(INJECT_TYPES)}")
        if not 0 <= rate < 1:
            raise UserError(f"--rate must be at least 0 and below 1, got {rate}")
        return _inject(
            self.document, self._images, self._corruptible, self._format, self._present, rate, seed, types, stream
        )


def inject_errors(
    document: dict[str, Any],
    *,
    rate: float = 0.2,
    seed: int = 0,
    types: Sequence[str] = INJECT_TYPES,
    stream: str = "inject",
) -> Injection:
    """A noisy copy of `document` with known errors; `document` is not modified (`Injector` for several)."""
    return Injector(document).inject(rate=rate, seed=seed, types=types, stream=stream)


def _plan(corruptible: int, classes: int, rate: float, types: Sequence[str]) -> tuple[list[str], int, list[str]]:
    """The types a copy gets, how many errors of each, and notes on what it can't get."""
    notes: list[str] = []
    wanted = list(dict.fromkeys(types))
    if "swap" in wanted and classes < 2:
        wanted.remove("swap")
        what = "a single-class dataset" if classes == 1 else "a dataset with no class in use"
        notes.append(f"{what}: no swap errors (there is no other class to swap to)")
    per_type = round(rate * corruptible / max(len(wanted), 1))
    consuming = [t for t in wanted if t != "spurious"]
    boxes = f"{corruptible} box{'es' if corruptible != 1 else ''} that can be corrupted"
    if consuming and per_type * len(consuming) > corruptible:
        per_type = corruptible // len(consuming)
        if per_type == 0:
            notes.append(
                f"no errors injected: {boxes} cannot take one of each of {len(consuming)} types that change or "
                "remove a box; give more images"
            )
    elif wanted and per_type == 0:
        notes.append(
            f"no errors injected: {boxes}, at rate {rate:g} over {len(wanted)} type{'s' if len(wanted) != 1 else ''}, "
            "make 0 of each type; give a higher --rate or more images"
        )
    return wanted, per_type, notes


def errors_per_type(
    document: dict[str, Any], rate: float, types: Sequence[str] = INJECT_TYPES
) -> tuple[int, list[str]]:
    """How many errors of each type a copy of `document` gets at `rate` (the same for every seed), and why not more."""
    corruptible = [a for a in document["annotations"] if not _is_crowd(a)]
    classes = len({int(a["category_id"]) for a in corruptible})
    _, per_type, notes = _plan(len(corruptible), classes, rate, types)
    return per_type, notes


def _inject(
    document: dict[str, Any],
    images: dict[int, dict[str, Any]],
    corruptible: list[int],
    fmt: _Format,
    present: Counter[int],
    rate: float,
    seed: int,
    types: Sequence[str],
    stream: str,
) -> Injection:
    rng = np.random.default_rng([seed, int.from_bytes(stream.encode(), "big")])
    # New dicts, the values shared (see Injector): an error sets a key (a new box list, a class), never changes
    # a value in place.
    annotations = [dict(a) for a in document["annotations"]]
    for annotation in annotations:
        annotation.pop("segmentation", None)
    wanted, per_type, notes = _plan(len(corruptible), len(present), rate, types)
    consuming = [t for t in wanted if t != "spurious"]

    order = rng.permutation(corruptible).tolist()
    chosen = {t: sorted(order[k * per_type : (k + 1) * per_type]) for k, t in enumerate(consuming)}
    by_class: dict[int, list[int]] = {}
    for index in corruptible:
        by_class.setdefault(int(annotations[index]["category_id"]), []).append(index)

    records: list[tuple[dict[str, Any], dict[str, Any] | None]] = []  # (record fields, noisy annotation)
    dropped: set[int] = set()
    added: list[tuple[int, dict[str, Any]]] = []  # (image id, new annotation)

    def truth(annotation: dict[str, Any]) -> dict[str, Any]:
        return {
            "image_id": int(annotation["image_id"]),
            "clean_annotation_id": int(annotation["id"]),
            "original_category_id": int(annotation["category_id"]),
            "original_bbox": [float(v) for v in annotation["bbox"]],
        }

    def regeometry(annotation: dict[str, Any], box: Sequence[float], rounding: str = "nearest") -> list[Any]:
        image = images[int(annotation["image_id"])]
        new = fmt.bbox(box, int(image["width"]), int(image["height"]), rounding)
        area = fmt.area(new, annotation)
        annotation["bbox"] = new
        if area is not None:
            annotation["area"] = area
        return new

    for kind in consuming:
        for index in chosen[kind]:
            annotation = annotations[index]
            fields = truth(annotation)
            image = images[int(annotation["image_id"])]
            size = (int(image["width"]), int(image["height"]))
            box = [float(v) for v in annotation["bbox"]]
            if kind == "drop":
                dropped.add(index)
                records.append(({**fields, "type": kind, "category_id": int(annotation["category_id"])}, None))
                continue
            if kind == "swap":
                others = sorted(c for c in present if c != int(annotation["category_id"]))
                annotation["category_id"] = int(rng.choice(others))
            elif kind == "duplicate":
                twin = _json_copy(annotation)
                regeometry(twin, duplicated_box(box, *size, rng))
                added.append((int(annotation["image_id"]), twin))
                records.append(({**fields, "type": kind, "category_id": int(twin["category_id"])}, twin))
                continue
            elif kind == "shift":
                original = _json_copy(annotation)
                for _ in range(_SHIFT_REDRAWS):
                    annotation.update(_json_copy(original))
                    # Written in the dataset's format, the IoU can leave [0.4, 0.7): such a draw is redrawn.
                    if 0.4 <= box_iou(regeometry(annotation, shifted_box(box, *size, rng)), box) < 0.7:
                        break
            elif kind == "loose":
                regeometry(annotation, loosened_box(box, *size, rng), "out")
            elif kind == "tight":
                regeometry(annotation, _tightened(box, rng), "in")
            records.append(({**fields, "type": kind, "category_id": int(annotation["category_id"])}, annotation))

    if "spurious" in wanted and corruptible:
        _add_spurious(annotations, corruptible, images, by_class, present, fmt, per_type, rng, added, records, notes)

    noisy = _assemble(annotations, dropped, added, rng)
    id_map: dict[int, int] = {}
    new_ids = {id(annotation) for _, annotation in added}
    for number, annotation in enumerate(noisy, start=1):
        if id(annotation) not in new_ids:
            id_map[number] = int(annotation["id"])
        annotation["id"] = number
    errors = [
        ErrorRecord.model_validate(
            {
                "annotation_id": None if annotation is None else annotation["id"],
                "bbox": None if annotation is None else [float(v) for v in annotation["bbox"]],
                "clean_annotation_id": None,
                "original_category_id": None,
                "original_bbox": None,
                **fields,
            }
        )
        for fields, annotation in records
    ]
    errors.sort(key=lambda r: (r.image_id, r.annotation_id or 0, r.clean_annotation_id or 0))
    result = {key: (noisy if key == "annotations" else _json_copy(value)) for key, value in document.items()}
    errors_file = ErrorsFile(description=INJECT_DESCRIPTION, seed=seed, error_rate=rate, errors=errors)
    return Injection(document=result, errors=errors_file, id_map=id_map, notes=notes)


def _add_spurious(
    annotations: list[dict[str, Any]],
    corruptible: list[int],
    images: dict[int, dict[str, Any]],
    by_class: dict[int, list[int]],
    present: Counter[int],
    fmt: _Format,
    count: int,
    rng: np.random.Generator,
    added: list[tuple[int, dict[str, Any]]],
    records: list[tuple[dict[str, Any], dict[str, Any] | None]],
    notes: list[str],
) -> None:
    """`count` boxes on background, each copying a real box of its class (size, keys, number format)."""
    boxes_in: dict[int, list[list[float]]] = {}
    for annotation in annotations:
        boxes_in.setdefault(int(annotation["image_id"]), []).append([float(v) for v in annotation["bbox"]])
    image_ids = sorted(images)
    classes = sorted(present)
    weights = np.asarray([present[c] for c in classes], dtype=np.float64)
    placed = 0
    for _ in range(count):
        category = int(rng.choice(classes, p=weights / weights.sum()))
        template = annotations[by_class[category][int(rng.integers(len(by_class[category])))]]
        w, h = (float(v) for v in template["bbox"][2:])
        for _ in range(_SPURIOUS_TRIES):
            image_id = image_ids[int(rng.integers(len(image_ids)))]
            width, height = int(images[image_id]["width"]), int(images[image_id]["height"])
            if w >= width or h >= height:
                continue
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            if all(box_iou(box, other) <= _SPURIOUS_MAX_IOU for other in boxes_in.get(image_id, [])):
                break
        else:
            continue
        spurious = _json_copy(template)
        spurious["image_id"] = image_id if isinstance(template["image_id"], int) else float(image_id)
        new = fmt.bbox(box, width, height)
        area = fmt.area(new, template)
        spurious["bbox"] = new
        if area is not None:
            spurious["area"] = area
        boxes_in.setdefault(image_id, []).append([float(v) for v in new])
        added.append((image_id, spurious))
        records.append(({"type": "spurious", "image_id": image_id, "category_id": category}, spurious))
        placed += 1
    if placed < count:
        notes.append(f"placed {placed} of {count} spurious boxes: no background spot was found for the rest")


def _assemble(
    annotations: list[dict[str, Any]],
    dropped: set[int],
    added: list[tuple[int, dict[str, Any]]],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """The copy's annotation list: the kept ones in their order, each new one at a random place among its image's."""
    kept = [annotation for index, annotation in enumerate(annotations) if index not in dropped]
    # Each annotation's image, kept in step with `kept`: finding an image's places is then one vector compare.
    owners = np.fromiter((int(annotation["image_id"]) for annotation in kept), dtype=np.int64, count=len(kept))
    for image_id, new in added:
        places = np.flatnonzero(owners == image_id)
        if places.size:
            # Any of the n + 1 slots around the image's n annotations, with equal chance.
            slot = int(rng.integers(places.size + 1))
            position = int(places[slot]) if slot < places.size else int(places[-1]) + 1
        else:
            position = int(rng.integers(len(kept) + 1))
        kept.insert(position, new)
        owners = np.insert(owners, position, image_id)
    return kept
