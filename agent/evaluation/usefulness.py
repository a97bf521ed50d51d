"""Does a metric find the errors it is meant to find, by more than chance explains?

Three pieces, pure logic on parsed data (the authoring loop runs the sandbox around them):

- **Targets.** What an idea should catch: one or more error types (`agent.data.label_errors`), or
  `property`, a data slice with no label error behind it ("very dark images"), which is never
  judged on errors. `parse_targets("shift,loose")`.
- **The usefulness set** (`usefulness_set`): errors of the target types injected
  (`agent.data.inject`) into a sample of the user's own images, at selftest's rate, with enough
  images that each of two halves holds about `errors_per_split` errors per target type where the
  dataset allows. The halves split the images: drafts are chosen on the *selection* half and the
  figure the user sees comes from the *reporting* half, which no choice was made on. Everything is
  drawn from the seed, so a replay gets the very same set.
- **The verdict** (`judge`). The items are the boxes of the half's images (the images, for an
  image metric or when every target is `drop`, a box metric then taking its most suspicious box per
  image). The positives are the items that carry a target error. The figure is the tie-aware AP,
  beside random's, which is the prevalence on average. The rule is a permutation test: the labels
  are shuffled over the items (`permutations` times, seeded) and the AP of each shuffle is what a
  ranking that knows nothing about the errors gets on these very items, ties included. The metric
  passes when its AP is reached by fewer than 5% of the shuffles (p < 0.05, one-sided), that is when
  it clears the 95th percentile of random rankings' AP. A constant metric gets exactly the
  prevalence on every shuffle and fails; a random one passes 5% of the time whatever the half's size;
  a perfect one passes. `margin` (AP minus that 95th percentile) is what drafts are compared on.
  Beside it, the spread of AP - random over image resamples (a bootstrap, `resamples` times) says
  how much the figure itself would move on other images. A bootstrap interval alone is not the
  rule: with ten-odd errors in a half it is far too narrow, and a random metric cleared it about a
  third of the time (measured: 0.345 of 200 random metrics, 9 errors). With fewer than
  `MIN_POSITIVES` positives there is no verdict: too few errors to tell.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from agent.data.inject import inject_errors
from agent.data.label_errors import ERROR_TYPES, ErrorsFile
from agent.errors import UserError
from agent.evaluation.ranking import (
    Direction,
    ErrorLabel,
    ScoreValue,
    image_error_types,
    object_error_types,
    pool_to_images,
    suspicion,
)

__all__ = [
    "MIN_POSITIVES", "PROPERTY", "SIGNIFICANCE", "TARGETS", "RankedItems", "UsefulnessSet", "Verdict", "judge",
    "parse_targets", "ranked_items", "usefulness_set",
]  # fmt: skip

PROPERTY = "property"
TARGETS = (*ERROR_TYPES, PROPERTY)
MIN_POSITIVES = 5
RATE = 0.2  # as selftest's default: each target type gets RATE / len(targets) of the sample's boxes
LOWER_PERCENTILE = 5.0
SIGNIFICANCE = 0.05


def parse_targets(text: str | Sequence[str]) -> tuple[str, ...]:
    """`"shift,loose"` or `["shift", "loose"]` as a checked tuple in the error types' order; UserError otherwise."""
    parts = [part.strip() for part in (text.split(",") if isinstance(text, str) else text)]
    parts = [part for part in parts if part]
    unknown = [part for part in parts if part not in TARGETS]
    if unknown:
        raise UserError(f"unknown target {unknown[0]!r}; a target is one or more of {', '.join(TARGETS)}")
    if not parts:
        raise UserError(f"an empty target; give one or more of {', '.join(TARGETS)}")
    if PROPERTY in parts and len(parts) > 1:
        raise UserError("'property' is a target of its own: a property has no label error to combine with")
    return tuple(t for t in TARGETS if t in parts)


@dataclass(frozen=True)
class UsefulnessSet:
    """Noisy copy of a sample of the dataset, its errors, and the two halves of its images."""

    document: dict[str, Any]
    errors: tuple[ErrorLabel, ...]
    selection: frozenset[int]  # image ids drafts are chosen on
    reporting: frozenset[int]  # image ids the shown figure comes from
    targets: tuple[str, ...]
    notes: tuple[str, ...] = ()
    errors_file: ErrorsFile | None = None  # the injection's errors.json, for `metricsmith eval` on the set

    def errors_in(self, images: frozenset[int] | set[int]) -> dict[str, int]:
        counts = {t: 0 for t in self.targets}
        for error in self.errors:
            if error.image_id in images:
                counts[error.type] = counts.get(error.type, 0) + 1
        return counts


def usefulness_set(
    document: dict[str, Any], targets: Sequence[str], seed: int, errors_per_split: int = 40
) -> UsefulnessSet:
    """Target errors injected into a seeded sample of `document`'s images, split in two halves."""
    types = tuple(t for t in targets if t != PROPERTY)
    if not types:
        raise ValueError("a property target is not judged on errors")
    rng = np.random.default_rng([seed, int.from_bytes(b"usefulness", "big")])
    images = list(document["images"])
    order = rng.permutation(len(images)).tolist()
    boxes_in: dict[int, int] = {}
    for annotation in document["annotations"]:
        if not annotation.get("iscrowd"):
            boxes_in[int(annotation["image_id"])] = boxes_in.get(int(annotation["image_id"]), 0) + 1
    # Enough boxes that RATE of them, shared among the types, gives errors_per_split per type per half,
    # with a quarter more, since a random split of the images does not split every type evenly.
    wanted = math.ceil(1.25 * 2 * errors_per_split * len(types) / RATE)
    picked, boxes = [], 0
    for index in order:
        picked.append(index)
        boxes += boxes_in.get(int(images[index]["id"]), 0)
        if boxes >= wanted:
            break
    kept = [images[i] for i in sorted(picked)]
    ids = {int(image["id"]) for image in kept}
    sample = {
        **document,
        "images": kept,
        "annotations": [a for a in document["annotations"] if int(a["image_id"]) in ids],
    }
    injection = inject_errors(sample, rate=RATE, seed=seed, types=types)
    halves = rng.permutation(sorted(ids)).tolist()
    selection = frozenset(halves[: len(halves) // 2])
    notes = list(injection.notes)
    result = UsefulnessSet(
        document=injection.document,
        errors=tuple(
            ErrorLabel(type=r.type, image_id=r.image_id, annotation_id=r.annotation_id) for r in injection.errors.errors
        ),
        selection=selection,
        reporting=frozenset(ids - selection),
        targets=types,
        notes=tuple(notes),
        errors_file=injection.errors,
    )
    short = {t: n for t, n in result.errors_in(ids).items() if n < 2 * errors_per_split}
    if short:
        shown = ", ".join(f"{n} {t}" for t, n in short.items())
        notes.append(f"the dataset is small: {shown} errors in all (wanted {2 * errors_per_split} of each)")
        result = dataclasses.replace(result, notes=tuple(notes))
    return result


@dataclass(frozen=True)
class Verdict:
    """How a metric ranks the target errors of one half, against random, and whether that clears noise."""

    passed: bool | None  # None: too few positives to tell
    level: Literal["object", "image"]
    items: int
    positives: int
    ap: float | None
    random: float | None  # a random ranking's AP: the prevalence
    lower: float | None  # the 5th percentile over image resamples of AP - random
    upper: float | None  # the 95th
    by_type: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # type -> (AP, random)
    random_high: float | None = None  # the 95th percentile of random rankings' AP on these items: the bar
    p_value: float | None = None  # the share of random rankings (label shuffles) at or above this AP
    scope: str | None = None  # judged on the boxes labelled this class only

    @property
    def margin(self) -> float:
        """AP above the bar random rankings reach one time in 20 (> 0: cleared); -inf with nothing to judge."""
        if self.ap is None or self.random_high is None:
            return -math.inf
        return self.ap - self.random_high

    def line(self) -> str:
        """One line for a person: AP against random, the bar noise sets, the spread, and the verdict."""
        if self.ap is None or self.random is None:
            items = f"{self.items} {self.scope} boxes" if self.scope else f"{self.items} items"
            return f"no target errors among the {items}: nothing to judge"
        parts = []
        if self.random_high is not None:
            parts.append(f"random rankings reach {self.random_high:.3f} one time in 20")
        if self.lower is not None and self.upper is not None:
            parts.append(f"AP - random over image resamples in [{self.lower:+.3f}, {self.upper:+.3f}]")
        parts.append(f"{self.positives} errors" + (f" among {self.items} {self.scope} boxes" if self.scope else ""))
        verdict = {True: "clears random", False: "not shown better than random", None: "too few errors to tell"}
        return f"AP {self.ap:.3f} vs random {self.random:.3f} ({'; '.join(parts)}): {verdict[self.passed]}"


@dataclass(frozen=True)
class RankedItems:
    """The items of one half as a verdict sees them: keys, their images, target labels and suspicion."""

    level: Literal["object", "image"]
    keys: list[int]  # annotation ids, or image ids
    owners: list[int]  # each key's image
    labels: NDArray[np.bool_]  # carries a target error
    values: NDArray[np.float64]  # suspicion, higher = more suspicious (agent.evaluation.ranking.suspicion)
    types_of: dict[int, frozenset[str]]
    scores: Mapping[int, ScoreValue]  # by key (a box metric judged on images: its pooled image scores)


def ranked_items(
    scores: Mapping[int, ScoreValue],
    level: Literal["object", "image"],
    direction: Direction,
    useful: UsefulnessSet,
    images: frozenset[int],
    scope: str | None = None,
) -> RankedItems:
    """The half's items: its boxes, or its images for an image metric or when every target is `drop`.

    `scope`: the one class an idea is about ("bear boxes that are not brown"): its items are then the
    boxes labelled that class, in the noisy copy, as the idea asks. A swap into `fox` is no error
    such a metric could see; left among the items, every one would sit at its bottom, unscored,
    and hide what it finds among the bears."""
    by_image = level == "image" or all(t == "drop" for t in useful.targets)
    in_scope = _labelled(useful.document, scope) if scope is not None and not by_image else None
    annotation_image = {
        int(a["id"]): int(a["image_id"])
        for a in useful.document["annotations"]
        if int(a["image_id"]) in images and (in_scope is None or int(a["id"]) in in_scope)
    }
    if by_image:
        if level == "object":
            scores = pool_to_images(
                {k: v for k, v in scores.items() if k in annotation_image}, annotation_image, direction
            )
        keys = sorted(images)
        owners = keys
        types_of = image_error_types(useful.errors)
    else:
        keys = sorted(annotation_image)
        owners = [annotation_image[key] for key in keys]
        types_of = object_error_types(useful.errors)
    labels = np.array([bool(types_of.get(key, frozenset()) & set(useful.targets)) for key in keys], dtype=bool)
    values = suspicion([scores.get(key) for key in keys], direction)
    return RankedItems(
        level="image" if by_image else "object", keys=keys, owners=owners, labels=labels, values=values,
        types_of=types_of, scores=scores,
    )  # fmt: skip


def _labelled(document: dict[str, Any], class_name: str) -> frozenset[int]:
    """Ids of the annotations labelled `class_name`."""
    ids = {int(c["id"]) for c in document.get("categories", []) if c.get("name") == class_name}
    return frozenset(int(a["id"]) for a in document["annotations"] if int(a["category_id"]) in ids)


def judge(
    scores: Mapping[int, ScoreValue],
    level: Literal["object", "image"],
    direction: Direction,
    useful: UsefulnessSet,
    images: frozenset[int],
    *,
    seed: int,
    scope: str | None = None,
    resamples: int = 200,
    permutations: int = 1999,
) -> Verdict:
    """The verdict on one half (`useful.selection` or `useful.reporting`) of the usefulness set.

    `scores` are the metric's on `useful.document`: by annotation id for a box metric, by image id
    for an image metric. `scope`: judged on that class's boxes only (`ranked_items`).
    """
    ranked = ranked_items(scores, level, direction, useful, images, scope)
    scope = scope if ranked.level == "object" else None
    keys, owner, labels, values, types_of = ranked.keys, ranked.owners, ranked.labels, ranked.values, ranked.types_of
    positives = int(labels.sum())
    if positives == 0:
        return Verdict(passed=None, level=ranked.level, items=len(keys), positives=0,
                       ap=None, random=None, lower=None, upper=None, scope=scope)  # fmt: skip
    image_index = {image: index for index, image in enumerate(sorted(images))}
    item_image = np.array([image_index[image] for image in owner], dtype=np.intp)
    rng = np.random.default_rng([seed, int.from_bytes(b"judge", "big")])
    drawn = rng.integers(len(image_index), size=(resamples, len(image_index)))
    weights = np.zeros((resamples + 1, len(image_index)))
    weights[0] = 1.0  # row 0: the half as it is
    for row, picks in enumerate(drawn, start=1):
        np.add.at(weights[row], picks, 1.0)
    ap, prevalence = _weighted_ap(values, labels, weights[:, item_image])
    differences = (ap - prevalence)[1:]
    finite = differences[np.isfinite(differences)]
    lower = float(np.percentile(finite, LOWER_PERCENTILE)) if finite.size else None
    upper = float(np.percentile(finite, 100 - LOWER_PERCENTILE)) if finite.size else None
    by_type = {}
    for target in useful.targets:
        mask = np.array([not types_of.get(key) or target in types_of[key] for key in keys])
        typed = labels & np.array([target in types_of.get(key, ()) for key in keys])
        if typed[mask].any():
            type_ap, type_prevalence = _weighted_ap(values[mask], typed[mask], np.ones((1, int(mask.sum()))))
            by_type[target] = (float(type_ap[0]), float(type_prevalence[0]))
        else:
            by_type[target] = (None, None)
    shuffled = rng.permuted(np.tile(labels, (permutations, 1)), axis=1)
    null, _ = _weighted_ap(values, shuffled, np.ones((1, len(values))))
    observed = float(ap[0])
    # +1 on both sides: the observed ranking is one of the rankings that could have come out (exact test).
    p_value = float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + permutations))
    random_high = float(np.percentile(null, 100 * (1 - SIGNIFICANCE)))
    passed = None if positives < MIN_POSITIVES else p_value < SIGNIFICANCE
    return Verdict(
        passed=passed, level=ranked.level, items=len(keys), positives=positives,
        ap=observed, random=float(prevalence[0]), lower=lower, upper=upper, by_type=by_type,
        random_high=random_high, p_value=p_value, scope=scope,
    )  # fmt: skip


def _weighted_ap(
    values: NDArray[np.float64], labels: NDArray[np.bool_], weights: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Tie-aware AP and prevalence for each row of item weights (a resample counts an item as often as its image).

    `labels` may be one row for every weight row, or one row each (the label shuffles of the permutation test,
    against weights of ones)."""
    order = np.argsort(-values, kind="stable")
    ordered = values[order]
    starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
    w = weights[:, order]
    sizes = np.add.reduceat(w, starts, axis=1)
    hits = np.add.reduceat(w * labels[..., order], starts, axis=1)
    total = hits.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.cumsum(hits, axis=1) / np.cumsum(sizes, axis=1)
        ap = np.where(total > 0, np.nansum(hits * precision, axis=1) / total, np.nan)
        prevalence = total / sizes.sum(axis=1)
    return ap, prevalence
