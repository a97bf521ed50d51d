"""A metric's worst misses on a usefulness set, in words a model (or a person) can act on.

An improvement round (agent.authoring.loop) shows the model what its metric gets wrong: the
injected errors it ranked as the most clean, and the clean items it ranked as the most suspicious.
Each is described by what a reader needs to see why: the class, the box, its size against the
median box of its class in this data, what the injection did to it, and where the metric put it.
Pure logic: the set and the scores come in, sentences go out.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from agent.data.label_errors import ErrorRecord, box_iou
from agent.evaluation.ranking import Direction, ScoreValue
from agent.evaluation.usefulness import RankedItems, UsefulnessSet, ranked_items

__all__ = ["Miss", "worst_misses"]


@dataclass(frozen=True)
class Miss:
    """One item the metric ranked wrongly: an error it let pass, or a clean item it flagged."""

    kind: Literal["missed_error", "false_alarm"]
    words: str


def _box(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" if float(v).is_integer() else f"{v:.1f}" for v in values) + "]"


def _score(value: ScoreValue) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no score"
    return f"score {value:.4g}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class _Describer:
    """Words for the boxes and images of one usefulness set."""

    def __init__(self, useful: UsefulnessSet) -> None:
        document = useful.document
        self.classes = {int(c["id"]): str(c.get("name", c["id"])) for c in document.get("categories", [])}
        self.annotations = {int(a["id"]): a for a in document["annotations"]}
        self.images = {int(i["id"]): i for i in document["images"]}
        areas: dict[int, list[float]] = defaultdict(list)
        for annotation in document["annotations"]:
            w, h = annotation["bbox"][2], annotation["bbox"][3]
            areas[int(annotation["category_id"])].append(float(w) * float(h))
        self.median_area = {category: statistics.median(values) for category, values in areas.items()}
        records = useful.errors_file.errors if useful.errors_file is not None else ()
        self.by_annotation: dict[int, list[ErrorRecord]] = defaultdict(list)
        self.by_image: dict[int, list[ErrorRecord]] = defaultdict(list)
        for record in records:
            if record.annotation_id is not None:
                self.by_annotation[record.annotation_id].append(record)
            self.by_image[record.image_id].append(record)

    def class_name(self, category_id: int | None) -> str:
        return self.classes.get(int(category_id), str(category_id)) if category_id is not None else "?"

    def box(self, annotation: Mapping[str, Any]) -> str:
        category = int(annotation["category_id"])
        x, y, w, h = (float(v) for v in annotation["bbox"])
        median = self.median_area.get(category)
        size = f", {w * h / median:.2g}x the median {self.class_name(category)} box's area" if median else ""
        image = self.images.get(int(annotation["image_id"]), {})
        shape = f" in a {image['width']}x{image['height']} image" if "width" in image and "height" in image else ""
        return (
            f"annotation {annotation['id']} (image {annotation['image_id']}, class {self.class_name(category)}): "
            f"box {_box((x, y, w, h))}{size}{shape}"
        )

    def what_was_done(self, record: ErrorRecord) -> str:
        truth = _box(record.original_bbox) if record.original_bbox is not None else ""
        if record.type == "swap":
            return f"injected swap: its true class is {self.class_name(record.original_category_id)}"
        if record.type == "spurious":
            return "injected spurious: a box where no object is"
        if record.type == "drop":
            return f"injected drop: a {self.class_name(record.category_id)} at {truth} was left without a box"
        assert record.bbox is not None and record.original_bbox is not None
        iou = box_iou(record.bbox, record.original_bbox)
        if record.type == "shift":
            return f"injected shift: the true box is {truth} (IoU {iou:.2f} with it)"
        if record.type == "loose":
            return f"injected loose: grown from the true box {truth}, which it contains"
        if record.type == "tight":
            return f"injected tight: shrunk from the true box {truth}, so it cuts off part of the object"
        return f"injected duplicate: a second, jittered box on an object already boxed at {truth}"

    def item(self, ranked: RankedItems, key: int) -> tuple[str, list[ErrorRecord]]:
        if ranked.level == "object":
            return self.box(self.annotations[key]), self.by_annotation.get(key, [])
        image = self.images.get(key, {})
        boxes = sum(1 for a in self.annotations.values() if int(a["image_id"]) == key)
        name = f" ({image['file_name']})" if "file_name" in image else ""
        return f"image {key}{name} with {boxes} box{'es' if boxes != 1 else ''}", self.by_image.get(key, [])


def worst_misses(
    scores: Mapping[int, ScoreValue],
    level: Literal["object", "image"],
    direction: Direction,
    useful: UsefulnessSet,
    images: frozenset[int],
    *,
    missed: int = 3,
    false_alarms: int = 2,
    scope: str | None = None,
) -> list[Miss]:
    """The `missed` target errors ranked as the most clean, then the `false_alarms` clean items ranked most suspicious.

    Ties are broken by key, the order a stable sort gives, and a tie is said: a metric that gives
    most items one value should hear that.
    """
    ranked = ranked_items(scores, level, direction, useful, images, scope)
    if not ranked.keys:
        return []
    order = np.argsort(-ranked.values, kind="stable")
    position = np.empty(len(order), dtype=np.intp)
    position[order] = np.arange(1, len(order) + 1)
    describe = _Describer(useful)
    total = len(ranked.keys)
    targets = set(useful.targets)

    def placed(index: int) -> str:
        value = ranked.values[index]
        tied = int(np.count_nonzero(ranked.values == value)) - 1
        ties = f", tied with {tied} other{'s' if tied != 1 else ''}" if tied else ""
        score = _score(ranked.scores.get(ranked.keys[index]))
        return f"ranked {_ordinal(int(position[index]))} most suspicious of {total} ({score}{ties})"

    found: list[Miss] = []
    positives = [int(i) for i in order[::-1] if ranked.labels[i]][:missed]
    for index in positives:
        text, records = describe.item(ranked, ranked.keys[index])
        done = "; ".join(describe.what_was_done(r) for r in records if r.type in targets)
        found.append(Miss("missed_error", f"{text}; {done}; {placed(index)}"))
    clean = [int(i) for i in order if not ranked.labels[i] and not ranked.types_of.get(ranked.keys[i])]
    for index in clean[:false_alarms]:
        text, _ = describe.item(ranked, ranked.keys[index])
        found.append(Miss("false_alarm", f"{text}; a clean {'box' if ranked.level == 'object' else 'image'}, "
                                         f"yet {placed(index)}"))  # fmt: skip
    return found
