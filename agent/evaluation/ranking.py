"""How well metrics find injected label errors: AP, AUROC, precision@K and recall at a review budget.

Pure functions over plain data (ids, scores, error records); the CLI only loads files and renders.

Conventions (every number of the report follows them):

* Suspicion. A metric's `SUSPICIOUS` direction turns its scores into one "suspicion" order: "high"
  means larger scores are reviewed first, "low" smaller ones. A missing score (no row, a failed
  call, None or NaN) is least suspicious: all such items tie at the bottom. A metric that fails on
  dirty items is thereby punished, not excused.
* Ties. Items with equal suspicion form a block, and no statistic ever looks inside a block (so
  ordering by id, file order or anything else earns nothing):
  - AP is the step-wise sum over distinct thresholds, sum_b (recall_b - recall_{b-1}) * precision_b,
    with recall and precision taken at the END of each tied block: the same definition as
    scikit-learn's `average_precision_score`, and identical to the usual AP when there are no ties.
    It is deliberately NOT the expectation over random orders within blocks: that expectation gives
    a constant metric more than the prevalence on small sets (0.75 for one positive among two),
    which would let an uninformative metric beat the random baseline. With this definition a
    constant metric scores exactly the prevalence.
  - AUROC is the Mann-Whitney probability that a positive outranks a negative, ties counting 1/2.
  - precision@K and recall@budget are exact expectations: when the cut falls inside a block of n
    items holding m positives and r of its slots are reviewed, the block contributes r * m / n hits.
* Items and positives. Object level: every annotation of annotations.json is an item, and it is
  positive when a non-drop error record names its `annotation_id`. Image level: every image is an
  item, dirty when it holds any error record, drops included.
* Per-type AP (`ap_by_type`). Positives are the items carrying that type; items carrying only
  OTHER error types are left out of that ranking (not counted as negatives), so a duplicate
  detector is not penalised for also flagging shifted boxes. Clean items are the negatives. Object
  level metrics get None for "drop" (a dropped box has no annotation to score).
* Image AP of an object metric pools its box scores per image with the most suspicious box (max for
  "high", min for "low"); an image with no scored box gets None (bottom). For an image metric
  `image_ap` equals `ap`.
* Baselines. `random`: the value an uninformative ranking gets: AP = prevalence (and per type, the
  per-type prevalence), AUROC = 0.5, precision@K = prevalence, recall@budget = reviewed share. One
  row per level the metrics use. With two metrics or more, two combinations follow, each at object
  level when any metric scores boxes (image metrics then give each box the score of its image),
  else at image level; their image AP ranks images by the same combination made of every metric's
  image scores (object metrics pooled as above):
  - `combined`: learned. Each metric's scores become suspicion ranks in (0, 1] (mid-ranks over its
    scored items divided by their count, missing = 0); a logistic regression on those ranks, their
    missing flags and their pairwise products predicts "has an error" (`agent.evaluation.stacking`). It is
    cross-validated: items are split into 5 folds by image (a seeded shuffle, seed 0), and every
    item is scored by a model fitted on the other folds only, so no item's own label, nor that of
    any box of its image, ever reaches its score.
  - `rank_average`: the mean of the suspicion ranks, per item. It looks at no label at all.

JSON schema of `metricsmith eval --json` (`EvaluationReport.model_dump_json()`):

    {
      "items": {"annotations": int, "images": int, "errors": int, "errors_by_type": {TYPE: int}},
      "prevalence": {"object": float|null, "image": float|null,
                     "object_by_type": {TYPE: float|null}, "image_by_type": {TYPE: float|null}},
      "budget": float,
      "metrics": [{"metric": str, "level": "object"|"image", "direction": "high"|"low",
                   "n_items": int, "n_positive": int, "ap": float|null, "auroc": float|null,
                   "precision_at_k": float|null, "recall_at_5pct": float|null,
                   "ap_by_type": {TYPE: float|null}, "image_ap": float|null}, ...]
    }

TYPE runs over the error types present in errors.json. A statistic is null when it is undefined
(no positives, or for AUROC no negatives). `metrics` lists the given metrics in order, then
`random` (one row per level), `combined` and `rank_average`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from agent.data.coco import Dataset
from agent.data.label_errors import ERROR_TYPES, load_errors
from agent.errors import UserError
from agent.evaluation.stacking import cross_validated_scores
from agent.metrics.scoring import ScoreRow, error_line, item_order

Direction = Literal["high", "low"]
Level = Literal["object", "image"]
ScoreValue = float | None

# The order the report shows error types in; unknown types from a newer generator follow, sorted.
DEFAULT_BUDGET = 0.05


class MismatchedFiles(UserError):
    """errors.json or a scores file names ids that annotations.json does not hold: wrong files."""


# -- file boundary --------------------------------------------------------------------------------


class ErrorLabel(BaseModel):
    """The part of an injected-error record the evaluation needs; other fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str
    image_id: int
    annotation_id: int | None = None


def load_error_labels(path: Path) -> list[ErrorLabel]:
    """Read errors.json through `agent.data.label_errors` (which checks it) and keep what ranking needs."""
    return [
        ErrorLabel(type=record.type, image_id=record.image_id, annotation_id=record.annotation_id)
        for record in load_errors(path).errors
    ]


class MetricEvaluation(BaseModel):
    metric: str
    level: Level
    direction: Direction
    n_items: int
    n_positive: int
    ap: float | None
    auroc: float | None
    precision_at_k: float | None
    recall_at_5pct: float | None
    ap_by_type: dict[str, float | None]
    image_ap: float | None


class ItemCounts(BaseModel):
    annotations: int
    images: int
    errors: int
    errors_by_type: dict[str, int]


class Prevalence(BaseModel):
    object: float | None
    image: float | None
    object_by_type: dict[str, float | None]
    image_by_type: dict[str, float | None]


class EvaluationReport(BaseModel):
    items: ItemCounts
    prevalence: Prevalence
    budget: float
    metrics: list[MetricEvaluation]


# -- ranking statistics ---------------------------------------------------------------------------


def suspicion(scores: Sequence[ScoreValue], direction: Direction) -> NDArray[np.float64]:
    """Scores as one descending order of suspicion; None and NaN become -inf (tied at the bottom)."""
    if direction not in ("high", "low"):
        raise ValueError(f"direction must be 'high' or 'low', got {direction!r}")
    values = np.array([math.nan if score is None else float(score) for score in scores], dtype=np.float64)
    if direction == "low":
        values = -values
    values[np.isnan(values)] = -np.inf
    return values


@dataclass(frozen=True, slots=True)
class _Blocks:
    """Tied blocks in descending suspicion: size and positives of each, in order."""

    sizes: NDArray[np.int64]
    positives: NDArray[np.int64]


def _blocks(scores: Sequence[ScoreValue], labels: Sequence[bool], direction: Direction) -> _Blocks:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    values = suspicion(scores, direction)
    if values.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Blocks(empty, empty)
    order = np.argsort(-values, kind="stable")
    ordered = values[order]
    hits = np.asarray(labels, dtype=np.int64)[order]
    # Compare neighbours, not their difference: -inf - -inf is NaN and would split the bottom block.
    starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
    sizes = np.diff(np.concatenate((starts, [ordered.size])))
    return _Blocks(sizes.astype(np.int64), np.add.reduceat(hits, starts).astype(np.int64))


def average_precision(scores: Sequence[ScoreValue], labels: Sequence[bool], direction: Direction) -> float | None:
    """Tie-aware AP (precision at the end of each tied block); None without positives."""
    blocks = _blocks(scores, labels, direction)
    total = int(blocks.positives.sum())
    if total == 0:
        return None
    precision = np.cumsum(blocks.positives) / np.cumsum(blocks.sizes)
    return float(np.sum(blocks.positives / total * precision))


def auroc(scores: Sequence[ScoreValue], labels: Sequence[bool], direction: Direction) -> float | None:
    """P(a positive outranks a negative), ties counting 1/2; None without positives or negatives."""
    blocks = _blocks(scores, labels, direction)
    negatives = blocks.sizes - blocks.positives
    n_pos, n_neg = int(blocks.positives.sum()), int(negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    below = n_neg - np.cumsum(negatives)  # negatives in the blocks after each block
    wins = np.sum(blocks.positives * (below + 0.5 * negatives))
    return float(wins / (n_pos * n_neg))


def expected_hits(scores: Sequence[ScoreValue], labels: Sequence[bool], direction: Direction, k: int) -> float:
    """Expected positives among the top k, the block cut at k contributing its share pro rata."""
    blocks = _blocks(scores, labels, direction)
    k = max(0, min(k, int(blocks.sizes.sum())))
    hits, seen = 0.0, 0
    for size, positives in zip(blocks.sizes.tolist(), blocks.positives.tolist(), strict=True):
        if seen + size <= k:
            hits += positives
            seen += size
            continue
        hits += (k - seen) * positives / size
        break
    return hits


def precision_at_k(
    scores: Sequence[ScoreValue], labels: Sequence[bool], direction: Direction, k: int | None = None
) -> float | None:
    """Expected precision of the top k (default: k = number of positives); None when k is 0."""
    k = int(sum(bool(label) for label in labels)) if k is None else k
    if k <= 0:
        return None
    return expected_hits(scores, labels, direction, k) / min(k, len(scores))


def recall_at_budget(
    scores: Sequence[ScoreValue], labels: Sequence[bool], direction: Direction, budget: float = DEFAULT_BUDGET
) -> float | None:
    """Expected recall when reviewing the top ceil(budget * n) items; None without positives."""
    positives = int(sum(bool(label) for label in labels))
    if positives == 0:
        return None
    return expected_hits(scores, labels, direction, budget_items(len(scores), budget)) / positives


def budget_items(n_items: int, budget: float) -> int:
    # round() first, so that 0.05 * 100 (5.000000000000001 in floating point) reviews 5 items, not 6.
    return math.ceil(round(budget * n_items, 9))


# -- labels, pooling, combination -----------------------------------------------------------------


def error_types(errors: Iterable[ErrorLabel]) -> list[str]:
    """The types present, in report order."""
    present = {error.type for error in errors}
    return [t for t in ERROR_TYPES if t in present] + sorted(present - set(ERROR_TYPES))


def object_error_types(errors: Iterable[ErrorLabel]) -> dict[int, frozenset[str]]:
    """Annotation id -> the (non-drop) error types it carries."""
    found: dict[int, set[str]] = defaultdict(set)
    for error in errors:
        if error.annotation_id is not None and error.type != "drop":
            found[error.annotation_id].add(error.type)
    return {key: frozenset(value) for key, value in found.items()}


def image_error_types(errors: Iterable[ErrorLabel]) -> dict[int, frozenset[str]]:
    """Image id -> the error types it holds, drops included."""
    found: dict[int, set[str]] = defaultdict(set)
    for error in errors:
        found[error.image_id].add(error.type)
    return {key: frozenset(value) for key, value in found.items()}


def pool_to_images(
    object_scores: Mapping[int, ScoreValue], annotation_image: Mapping[int, int], direction: Direction
) -> dict[int, ScoreValue]:
    """Each image's most suspicious box score (max for "high", min for "low"); unscored boxes skipped."""
    pooled: dict[int, float] = {}
    better = max if direction == "high" else min
    for annotation_id, score in object_scores.items():
        if score is None or math.isnan(score):
            continue
        image_id = annotation_image[annotation_id]
        pooled[image_id] = better(pooled[image_id], score) if image_id in pooled else score
    return dict(pooled)


def suspicion_ranks(scores: Sequence[ScoreValue], direction: Direction) -> NDArray[np.float64]:
    """Mid-rank of each scored item's suspicion divided by the number scored, in (0, 1]; missing = 0."""
    values = suspicion(scores, direction)
    scored = np.isfinite(values) | (values == np.inf)
    ranks = np.zeros(values.size, dtype=np.float64)
    kept = values[scored]
    if kept.size:
        ordered = np.sort(kept)
        # Mid-rank: items strictly below, plus half the tied block (itself included), 1-based.
        below = np.searchsorted(ordered, kept, side="left")
        at_or_below = np.searchsorted(ordered, kept, side="right")
        ranks[scored] = (below + at_or_below + 1) / 2 / kept.size
    return ranks


def rank_average(columns: Sequence[tuple[Sequence[ScoreValue], Direction]]) -> list[float]:
    """The mean suspicion rank over several metrics' scores of the same items (higher = more suspicious)."""
    if not columns:
        raise ValueError("nothing to combine")
    return np.mean([suspicion_ranks(scores, direction) for scores, direction in columns], axis=0).tolist()


# -- whole evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricScores:
    """One metric's scores: by annotation id (object level) or image id (image level)."""

    name: str
    level: Level
    direction: Direction
    scores: Mapping[int, ScoreValue]


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What annotations.json and errors.json say: every item, and which ones are dirty."""

    annotation_image: Mapping[int, int]  # annotation id -> image id
    image_ids: Sequence[int]
    errors: Sequence[ErrorLabel]
    source: str = "annotations.json"  # the annotations file's name, for messages


def ground_truth(dataset: Dataset, errors: Sequence[ErrorLabel] = ()) -> GroundTruth:
    """Every item of the dataset, and the errors known about them (none when not given)."""
    return GroundTruth(
        annotation_image={annotation.id: annotation.image_id for annotation in dataset.annotations},
        image_ids=[image.id for image in dataset.images],
        errors=tuple(errors),
        source=dataset.annotations_path.name,
    )


def scores_from_rows(rows: Iterable[ScoreRow], directions: Mapping[str, Direction]) -> list[MetricScores]:
    """Group score rows by metric, in first-seen order; a failed call counts as a missing score."""
    grouped: dict[str, dict[int, ScoreValue]] = {}
    levels: dict[str, str] = {}
    for row in rows:
        level = levels.setdefault(row.metric, row.level)
        if level != row.level or level not in ("object", "image"):
            raise UserError(f"metric {row.metric}: rows of level {level!r} and {row.level!r}")
        key = row.annotation_id if level == "object" else row.image_id
        if key is None:
            raise UserError(f"metric {row.metric}: an object-level row without annotation_id (image {row.image_id})")
        scores = grouped.setdefault(row.metric, {})
        if key in scores:
            raise UserError(f"metric {row.metric}: two rows for {level} {key}")
        scores[key] = None if row.error_kind is not None else row.score
    missing = [name for name in grouped if name not in directions]
    if missing:
        raise UserError(f"unknown SUSPICIOUS direction of metric {missing[0]}; pass --direction {missing[0]}=high|low")
    return [
        MetricScores(name=name, level=levels[name], direction=directions[name], scores=scores)  # type: ignore[arg-type]
        for name, scores in grouped.items()
    ]


def failure_notes(rows: Iterable[ScoreRow], file_names: Mapping[int, str], *, over: str, consequence: str) -> list[str]:
    """What failed among `rows`' score() calls, said once: images no metric could read, then each metric's own.

    A failed call leaves its item without a score (`scores_from_rows`), and such an item is ranked
    last, so every figure or queue it is in is the worse for it: the user must hear it, as `score`
    says it. `over` says where the rows come from ("over the 3 copies", or ""); `consequence` what
    becomes of the items of unreadable images, which no metric scored.
    """
    failed = sorted((row for row in rows if row.error_kind is not None), key=item_order)
    notes = []
    unreadable = {row.image_id: row for row in reversed(failed) if row.error_kind == "image_unreadable"}
    if unreadable:
        first = unreadable[min(unreadable)]
        notes.append(
            f"{len(unreadable)} of {len(file_names)} images could not be read, so no metric scored their items "
            f"(first: image {first.image_id} ({file_names.get(first.image_id, '?')}): {error_line(first.error)}); "
            f"those items {consequence}"
        )
    by_metric: dict[str, list[ScoreRow]] = {}
    for row in failed:
        if row.error_kind != "image_unreadable":
            by_metric.setdefault(row.metric, []).append(row)
    for metric, its_rows in by_metric.items():
        kinds = Counter(row.error_kind for row in its_rows)
        first = its_rows[0]  # its image names it in every copy; a box's number may differ between copies
        notes.append(
            f"{metric}: {len(its_rows)} call{'s' if len(its_rows) != 1 else ''} failed{' ' + over if over else ''} "
            f"({', '.join(f'{count} {kind}' for kind, count in kinds.most_common())}; first: {first.error_kind} on "
            f"image {first.image_id} ({file_names.get(first.image_id, '?')}): {error_line(first.error)}); "
            "those items count as least suspicious by it"
        )
    return notes


def check_files(
    truth: GroundTruth, rows: Iterable[ScoreRow] = (), errors_name: str = "errors.json", scores_name: str = "scores"
) -> None:
    """Raise MismatchedFiles naming the first id that the annotations file lacks, with the total count."""
    images = set(truth.image_ids)
    problems: list[str] = []
    for index, error in enumerate(truth.errors):
        if error.image_id not in images:
            problems.append(f"{errors_name}: error {index} names image_id {error.image_id}, not in {truth.source}")
        elif error.annotation_id is not None and truth.annotation_image.get(error.annotation_id) != error.image_id:
            elsewhere = error.annotation_id in truth.annotation_image
            where = "of another image" if elsewhere else f"not in {truth.source}"
            problems.append(f"{errors_name}: error {index} names annotation_id {error.annotation_id}, {where}")
    for index, row in enumerate(rows):
        if row.image_id not in images:
            problems.append(f"{scores_name}: row {index + 1} has image_id {row.image_id}, not in {truth.source}")
        elif row.annotation_id is not None and truth.annotation_image.get(row.annotation_id) != row.image_id:
            where = f"not in {truth.source}" if row.annotation_id not in truth.annotation_image else "of another image"
            problems.append(f"{scores_name}: row {index + 1} has annotation_id {row.annotation_id}, {where}")
    if problems:
        more = f" ({len(problems)} mismatched ids in all; are these files of the same dataset?)"
        raise MismatchedFiles(problems[0] + more)


@dataclass(frozen=True, slots=True)
class _Level:
    """The items of one level, with each item's error types."""

    kind: Level
    keys: list[int]
    types: dict[int, frozenset[str]]
    # Every metric is ranked on the same items: each ranking's items and labels are made once.
    _made: dict[str | None, tuple[list[int], list[bool]]] = field(default_factory=dict, compare=False, repr=False)

    def labels(self, error_type: str | None = None) -> tuple[list[int], list[bool]]:
        """Items and labels of one ranking: all items, or for a type, clean items plus those of the type."""
        made = self._made.get(error_type)
        if made is None:
            if error_type is None:
                made = self.keys, [bool(self.types.get(key)) for key in self.keys]
            else:
                keys = [key for key in self.keys if not self.types.get(key) or error_type in self.types[key]]
                made = keys, [error_type in self.types.get(key, ()) for key in keys]
            self._made[error_type] = made
        return made


def _ranking_stats(
    level: _Level, scores: Mapping[int, ScoreValue], direction: Direction, type_names: Sequence[str], budget: float
) -> dict[str, object]:
    """The ranking fields of a `MetricEvaluation` (all but its name, level, direction and image AP)."""
    keys, labels = level.labels()
    values = [scores.get(key) for key in keys]
    by_type: dict[str, float | None] = {}
    for error_type in type_names:
        if error_type == "drop" and level.kind == "object":
            by_type[error_type] = None  # a dropped box has no annotation to score
            continue
        type_keys, type_labels = level.labels(error_type)
        by_type[error_type] = average_precision([scores.get(key) for key in type_keys], type_labels, direction)
    return dict(
        n_items=len(keys),
        n_positive=sum(labels),
        ap=average_precision(values, labels, direction),
        auroc=auroc(values, labels, direction),
        precision_at_k=precision_at_k(values, labels, direction),
        recall_at_5pct=recall_at_budget(values, labels, direction, budget),
        ap_by_type=by_type,
    )


def _prevalence(level: _Level, error_type: str | None = None) -> float | None:
    keys, labels = level.labels(error_type)
    return sum(labels) / len(keys) if keys else None


def evaluate(truth: GroundTruth, metrics: Sequence[MetricScores], budget: float = DEFAULT_BUDGET) -> EvaluationReport:
    """Every statistic for every metric, plus the random and combined baselines."""
    if not 0 < budget <= 1:
        raise UserError(f"the review budget must be in (0, 1], got {budget}")
    type_names = error_types(truth.errors)
    objects = _Level("object", list(truth.annotation_image), object_error_types(truth.errors))
    images = _Level("image", list(dict.fromkeys(truth.image_ids)), image_error_types(truth.errors))
    object_types = {t: (None if t == "drop" else _prevalence(objects, t)) for t in type_names}
    prevalence = Prevalence(
        object=_prevalence(objects),
        image=_prevalence(images),
        object_by_type=object_types,
        image_by_type={t: _prevalence(images, t) for t in type_names},
    )
    results = [_evaluate_one(metric, truth, objects, images, type_names, budget) for metric in metrics]
    for level_name in ("object", "image"):
        if any(metric.level == level_name for metric in metrics):
            results.append(_random_row(level_name, objects if level_name == "object" else images, prevalence, budget))
    if len(metrics) >= 2:
        results.extend(_combined_rows(truth, metrics, objects, images, type_names, budget))
    counts = Counter(error.type for error in truth.errors)
    return EvaluationReport(
        items=ItemCounts(
            annotations=len(objects.keys),
            images=len(images.keys),
            errors=len(truth.errors),
            errors_by_type={t: counts[t] for t in type_names},
        ),
        prevalence=prevalence,
        budget=budget,
        metrics=results,
    )


def _evaluate_one(
    metric: MetricScores,
    truth: GroundTruth,
    objects: _Level,
    images: _Level,
    type_names: Sequence[str],
    budget: float,
) -> MetricEvaluation:
    if metric.level == "object":
        stats = _ranking_stats(objects, metric.scores, metric.direction, type_names, budget)
        pooled = pool_to_images(metric.scores, truth.annotation_image, metric.direction)
        image_ap = _image_ap(images, pooled, metric.direction)
    else:
        stats = _ranking_stats(images, metric.scores, metric.direction, type_names, budget)
        image_ap = stats["ap"]
    return MetricEvaluation(
        metric=metric.name, level=metric.level, direction=metric.direction, image_ap=image_ap, **stats
    )


def _image_ap(images: _Level, scores: Mapping[int, ScoreValue], direction: Direction) -> float | None:
    keys, labels = images.labels()
    return average_precision([scores.get(key) for key in keys], labels, direction)


def _random_row(level: Level, items: _Level, prevalence: Prevalence, budget: float) -> MetricEvaluation:
    # The exact values of an uninformative ranking, not a simulation: nothing to seed or average.
    keys, labels = items.labels()
    positives = sum(labels)
    rate = prevalence.object if level == "object" else prevalence.image
    by_type = prevalence.object_by_type if level == "object" else prevalence.image_by_type
    return MetricEvaluation(
        metric="random",
        level=level,
        direction="high",
        n_items=len(keys),
        n_positive=positives,
        ap=rate if positives else None,
        auroc=0.5 if 0 < positives < len(keys) else None,
        precision_at_k=rate if positives else None,
        recall_at_5pct=budget_items(len(keys), budget) / len(keys) if positives else None,
        ap_by_type={t: (v if v else None) for t, v in by_type.items()},
        image_ap=prevalence.image or None,
    )


def metric_columns(
    truth: GroundTruth, metrics: Sequence[MetricScores], level: _Level
) -> list[tuple[list[ScoreValue], Direction]]:
    """Every metric's scores over one level's items: object metrics pooled to images, image metrics spread to boxes."""
    columns: list[tuple[list[ScoreValue], Direction]] = []
    for metric in metrics:
        scores = metric.scores
        if level.kind == "image" and metric.level == "object":
            scores = pool_to_images(scores, truth.annotation_image, metric.direction)
        if level.kind == "object" and metric.level == "image":
            columns.append(([scores.get(truth.annotation_image[key]) for key in level.keys], metric.direction))
        else:
            columns.append(([scores.get(key) for key in level.keys], metric.direction))
    return columns


def _learned(truth: GroundTruth, metrics: Sequence[MetricScores], level: _Level) -> dict[int, ScoreValue]:
    columns = metric_columns(truth, metrics, level)
    ranks = np.column_stack([suspicion_ranks(scores, direction) for scores, direction in columns])
    _, labels = level.labels()
    groups = [truth.annotation_image[key] for key in level.keys] if level.kind == "object" else level.keys
    return dict(zip(level.keys, cross_validated_scores(ranks, labels, groups), strict=True))


def _combined_rows(
    truth: GroundTruth,
    metrics: Sequence[MetricScores],
    objects: _Level,
    images: _Level,
    type_names: Sequence[str],
    budget: float,
) -> list[MetricEvaluation]:
    """`combined` (learned, cross-validated by image) and `rank_average` (label-free)."""
    # Object level when any metric scores boxes: every metric, image metrics spread to their boxes.
    main = objects if any(metric.level == "object" for metric in metrics) else images
    rows = []
    for name in ("combined", "rank_average"):
        if name == "combined":
            main_scores = _learned(truth, metrics, main)
            image_scores = main_scores if main is images else _learned(truth, metrics, images)
        else:
            main_scores = dict(zip(main.keys, rank_average(metric_columns(truth, metrics, main)), strict=True))
            image_scores = dict(zip(images.keys, rank_average(metric_columns(truth, metrics, images)), strict=True))
        stats = _ranking_stats(main, main_scores, "high", type_names, budget)
        image_ap = _image_ap(images, image_scores, "high")
        rows.append(MetricEvaluation(metric=name, level=main.kind, direction="high", image_ap=image_ap, **stats))
    return rows
