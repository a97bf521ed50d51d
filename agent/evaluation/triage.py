"""One suspicion ranking over a dataset's boxes and images, with reasons in words: the triage queue.

How the metrics are combined (`TriageResult.method`):

* `injected` (the default, no ground truth): `selftest`'s machinery writes K noisy copies of the
  user's own data (`agent.data.inject`, in a random stream of its own, `STREAM`, so that no copy
  is drawn like the ones `inject` or `selftest` make for the same seeds). The copies and the
  original are scored in one run. A logistic regression on the metrics' suspicion ranks (the
  features of `agent.evaluation.stacking`) learns "this box was corrupted" on the copies and is
  applied to the original boxes, cross-fitted by image (`agent.metrics.learned.fold_of`): the
  boxes of an image in fold f are scored by a model trained only on the copies' boxes of the other
  folds' images. So no original box is scored by a model that saw its image, clean or corrupted.
* `known_errors` (with an errors.json): the same regression learned on the known errors of the
  dataset itself, cross-validated by image (`stacking.cross_validated_scores`).
* `rank_average`: the mean suspicion rank, which looks at no label. It is the fallback when there
  is only one metric or nothing to learn from, and it is named as such wherever it is shown.

The most likely error type of a box comes from one such regression per injected (or known) type
against clean boxes, cross-fitted the same way; the type whose model gives the box the highest
probability wins. An image's suspicion is that of its most suspicious box (0 for an image without
boxes): image metrics reach it through its boxes, since each box carries its image's scores.

Reasons: for each metric, where the box stands among the boxes of its class (object metrics) or
among all images (image metrics), as "the worst N%" of them. The metrics with the most extreme
standing are named, at most `MAX_REASONS`, each only when within the worst `REASON_SHARE`.

`triage.jsonl` (`write_jsonl`): one `TriageItem` per line, the boxes in queue order (rank 1 first),
then the images in queue order:

    {"rank": 1, "level": "object", "image_id": 12, "annotation_id": 40, "file_name": "img_12.png",
     "category": "bear", "bbox": [x, y, w, h], "suspicion": 0.93, "method": "injected",
     "likely_error": "shift", "likely_error_probability": 0.71,
     "reasons": [{"metric": "box_tightness", "worst_share": 0.008,
                  "text": "box tightness in the worst 1% of bear boxes"}],
     "scores": {"box_tightness": 0.12, ...}}

An image line has "level": "image", "annotation_id", "category" and "bbox" null, the reasons and
likely error of its most suspicious box, and "boxes": the annotation ids of the image, most
suspicious first. `likely_error` is null under `rank_average`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from agent.data.coco import Dataset
from agent.errors import UserError
from agent.evaluation.ranking import (
    ErrorLabel,
    GroundTruth,
    MetricScores,
    budget_items,
    failure_notes,
    ground_truth,
    metric_columns,
    object_error_types,
    precision_at_k,
    rank_average,
    recall_at_budget,
    scores_from_rows,
    suspicion,
    suspicion_ranks,
)
from agent.evaluation.selftest import score_noisy_copies
from agent.evaluation.stacking import cross_validated_scores, expand_features, fit_logistic, predict_logistic
from agent.metrics.contract import MetricSpec
from agent.metrics.learned import fold_of
from agent.metrics.scoring import ScoreRow
from sandbox.isolation import SandboxConfig

__all__ = [
    "MAX_REASONS", "REASON_SHARE", "STREAM", "Method", "Reason", "TrainingCopy", "TriageFigures", "TriageItem",
    "TriageResult", "load_jsonl", "rank_boxes", "run_triage", "score_with_copies", "scores_of_rows",
    "triage_from_scores", "worst_shares", "write_jsonl",
]  # fmt: skip

STREAM = "triage"  # inject's random stream for triage's training copies
MAX_REASONS = 3
REASON_SHARE = 0.10
MIN_POSITIVES = 5  # a fold's model needs this many corrupted boxes to learn from
Method = Literal["injected", "known_errors", "rank_average"]


class Reason(BaseModel):
    metric: str
    worst_share: float  # share of the comparison group at least as suspicious on this metric
    text: str


class TriageItem(BaseModel):
    rank: int
    level: Literal["object", "image"]
    image_id: int
    annotation_id: int | None
    file_name: str
    category: str | None
    bbox: list[float] | None
    suspicion: float
    method: Method
    likely_error: str | None
    likely_error_probability: float | None
    reasons: list[Reason]
    scores: dict[str, float | None]
    boxes: list[int] | None = None  # image lines: the image's annotation ids, most suspicious first


class TriageFigures(BaseModel):
    """How the queue does on known errors (only with --errors)."""

    budget: float
    reviewed: int
    precision_at_budget: float | None
    recall_at_5pct: float | None
    random_precision: float | None


@dataclass(frozen=True)
class TriageResult:
    method: Method
    boxes: list[TriageItem]  # in queue order
    images: list[TriageItem]  # in queue order
    notes: list[str]
    metrics: list[MetricScores]  # the original's scores the queue was made from
    figures: TriageFigures | None = None


@dataclass(frozen=True)
class TrainingCopy:
    """A noisy copy's metric scores, its items, and the errors injected into it."""

    metrics: list[MetricScores]
    truth: GroundTruth


# -- learning -------------------------------------------------------------------------------------


def _object_ranks(truth: GroundTruth, metrics: Sequence[MetricScores]) -> tuple[list[int], NDArray[np.float64]]:
    """Box ids and each metric's suspicion rank of them (image metrics give a box its image's rank)."""
    keys = list(truth.annotation_image)
    level = _ObjectItems(keys)
    columns = metric_columns(truth, metrics, level)  # type: ignore[arg-type]
    ranks = np.column_stack([suspicion_ranks(scores, direction) for scores, direction in columns])
    return keys, ranks.reshape(len(keys), len(metrics))


@dataclass(frozen=True)
class _ObjectItems:
    """What `metric_columns` reads of a level: its kind and its items."""

    keys: list[int]
    kind: str = "object"


def _cross_fitted(
    features: NDArray[np.float64],
    image_ids: Sequence[int],
    train_features: NDArray[np.float64],
    train_labels: NDArray[np.bool_],
    train_images: Sequence[int],
    keep: NDArray[np.bool_] | None = None,
) -> NDArray[np.float64] | None:
    """Each row's probability from a model trained on the training rows of the other folds' images only.

    `keep` limits the training rows (for a per-type model: clean rows and that type's). None when
    some fold has too few positives to learn from.
    """
    folds = fold_of(list(image_ids) + list(train_images))
    row_fold = np.array([folds[i] for i in image_ids])
    train_fold = np.array([folds[i] for i in train_images])
    usable = np.ones(len(train_labels), dtype=bool) if keep is None else keep
    scores = np.zeros(len(features))
    for fold in sorted(set(row_fold.tolist())):
        train = usable & (train_fold != fold)
        if int(train_labels[train].sum()) < MIN_POSITIVES or int((~train_labels[train]).sum()) < MIN_POSITIVES:
            return None
        weights = fit_logistic(train_features[train], train_labels[train])
        held = row_fold == fold
        scores[held] = predict_logistic(weights, features[held])
    return scores


def _training_rows(
    copies: Sequence[TrainingCopy],
) -> tuple[NDArray[np.float64], list[int], list[frozenset[str]]]:
    """The copies' boxes stacked: features, image ids, and the error types each box carries."""
    blocks, images, types = [], [], []
    for copy in copies:
        keys, ranks = _object_ranks(copy.truth, copy.metrics)
        carried = object_error_types(copy.truth.errors)
        blocks.append(expand_features(ranks))
        images.extend(copy.truth.annotation_image[key] for key in keys)
        types.extend(carried.get(key, frozenset()) for key in keys)
    return np.vstack(blocks), images, types


def _likely_errors(
    features: NDArray[np.float64],
    image_ids: Sequence[int],
    train_features: NDArray[np.float64],
    train_images: Sequence[int],
    train_types: Sequence[frozenset[str]],
) -> list[tuple[str | None, float | None]]:
    """Per row, the error type whose one-versus-clean model gives it the highest probability."""
    names = sorted({t for carried in train_types for t in carried})
    per_type: dict[str, NDArray[np.float64]] = {}
    clean = np.array([not carried for carried in train_types])
    for name in names:
        labels = np.array([name in carried for carried in train_types])
        scores = _cross_fitted(features, image_ids, train_features, labels, train_images, keep=clean | labels)
        if scores is not None:
            per_type[name] = scores
    if not per_type:
        return [(None, None)] * len(features)
    table = np.column_stack(list(per_type.values()))
    best = table.argmax(axis=1)
    kinds = list(per_type)
    return [(kinds[b], float(table[row, b])) for row, b in enumerate(best.tolist())]


def rank_boxes(
    truth: GroundTruth,
    metrics: Sequence[MetricScores],
    copies: Sequence[TrainingCopy] = (),
    known_errors: Sequence[ErrorLabel] | None = None,
) -> tuple[Method, dict[int, float], dict[int, tuple[str | None, float | None]], list[str]]:
    """Each box's suspicion, its likely error type, and the method used (see the module docstring).

    `known_errors` given: learn from them; else `copies` given: learn on the copies; else (or when
    there is nothing to learn from) the rank average.
    """
    notes: list[str] = []
    keys, ranks = _object_ranks(truth, metrics)
    images = [truth.annotation_image[key] for key in keys]
    none: dict[int, tuple[str | None, float | None]] = {key: (None, None) for key in keys}
    average = dict(zip(keys, rank_average(metric_columns(truth, metrics, _ObjectItems(keys))), strict=True))  # type: ignore[arg-type]
    if len(metrics) < 2:
        notes.append("one metric: the queue is its rank (rank_average), nothing to combine")
        return "rank_average", average, none, notes
    features = expand_features(ranks)
    if known_errors is not None:
        carried = object_error_types(known_errors)
        labels = [bool(carried.get(key)) for key in keys]
        if sum(labels) < MIN_POSITIVES:
            notes.append(f"fewer than {MIN_POSITIVES} known box errors to learn from: rank_average instead")
            return "rank_average", average, none, notes
        scores = cross_validated_scores(ranks, labels, images)
        types = _likely_errors(features, images, features, images, [carried.get(key, frozenset()) for key in keys])
        return "known_errors", dict(zip(keys, scores, strict=True)), dict(zip(keys, types, strict=True)), notes
    if not copies:
        return "rank_average", average, none, notes
    train_features, train_images, train_types = _training_rows(copies)
    labels = np.array([bool(carried) for carried in train_types])
    learned = _cross_fitted(features, images, train_features, labels, train_images)
    if learned is None:
        notes.append("too few injected box errors per fold to learn from: rank_average instead")
        return "rank_average", average, none, notes
    types = _likely_errors(features, images, train_features, train_images, train_types)
    return "injected", dict(zip(keys, learned.tolist(), strict=True)), dict(zip(keys, types, strict=True)), notes


# -- reasons --------------------------------------------------------------------------------------


def _words(metric: str) -> str:
    return metric.replace("_", " ")


def _share_text(share: float) -> str:
    # Rounded up, so that "the worst 1%" never names a box outside the worst 1%.
    return f"{max(1, math.ceil(round(share * 100, 9)))}%"


def worst_shares(
    scores: Mapping[int, float | None], direction: Literal["high", "low"], groups: Mapping[int, Any]
) -> dict[int, float]:
    """Per scored item, the share of its group (same value in `groups`) at least as suspicious; missing: none."""
    members: dict[Any, list[int]] = defaultdict(list)
    for key in scores:
        members[groups[key]].append(key)
    shares: dict[int, float] = {}
    for keys in members.values():
        values = suspicion([scores[key] for key in keys], direction)
        scored = np.isfinite(values) | (values == np.inf)
        ordered = np.sort(values[scored])
        for key, value, ok in zip(keys, values.tolist(), scored.tolist(), strict=True):
            if ok:
                at_least = ordered.size - np.searchsorted(ordered, value, side="left")
                shares[key] = float(at_least / ordered.size)
    return shares


def _reasons(
    key: int,
    image_id: int,
    metrics: Sequence[MetricScores],
    shares: Mapping[str, Mapping[int, float]],
    category: str,
) -> list[Reason]:
    found = []
    for metric in metrics:
        item = key if metric.level == "object" else image_id
        share = shares[metric.name].get(item)
        if share is None:
            continue
        group = f"{category} boxes" if metric.level == "object" else "images"
        found.append(Reason(metric=metric.name, worst_share=share, text=f"{_words(metric.name)} in the worst "
                            f"{_share_text(share)} of {group}"))  # fmt: skip
    found.sort(key=lambda reason: reason.worst_share)
    strong = [reason for reason in found if reason.worst_share <= REASON_SHARE]
    return (strong or found[:1])[:MAX_REASONS]


# -- the whole queue ------------------------------------------------------------------------------


def triage_from_scores(
    dataset: Dataset,
    metrics: Sequence[MetricScores],
    copies: Sequence[TrainingCopy] = (),
    known_errors: Sequence[ErrorLabel] | None = None,
    budget: float = 0.05,
) -> TriageResult:
    """The queue of boxes and of images, from the original's metric scores (and the copies' or the known errors)."""
    if not metrics:
        raise UserError("triage needs at least one metric's scores")
    truth = ground_truth(dataset, known_errors or ())
    if not truth.annotation_image:
        raise UserError(f"{dataset.annotations_path}: no annotations to triage")
    method, scores, likely, notes = rank_boxes(truth, metrics, copies, known_errors)
    names = {category.id: category.name for category in dataset.categories}
    annotations = {annotation.id: annotation for annotation in dataset.annotations}
    box_class = {key: annotations[key].category_id for key in annotations}
    shares = {
        metric.name: worst_shares(
            metric.scores, metric.direction, box_class if metric.level == "object" else defaultdict(int)
        )
        for metric in metrics
    }
    files = {image.id: image.file_name for image in dataset.images}
    order = sorted(scores, key=lambda key: (-scores[key], key))
    boxes = []
    for rank, key in enumerate(order, start=1):
        annotation = annotations[key]
        kind, probability = likely[key]
        category = names.get(annotation.category_id, str(annotation.category_id))
        boxes.append(
            TriageItem(
                rank=rank, level="object", image_id=annotation.image_id, annotation_id=key,
                file_name=files[annotation.image_id], category=category, bbox=[float(v) for v in annotation.bbox],
                suspicion=float(scores[key]), method=method, likely_error=kind, likely_error_probability=probability,
                reasons=_reasons(key, annotation.image_id, metrics, shares, category),
                scores={m.name: m.scores.get(key if m.level == "object" else annotation.image_id) for m in metrics},
            )
        )  # fmt: skip
    images = _image_queue(dataset, boxes, metrics, method)
    figures = _figures(truth, scores, budget) if known_errors is not None else None
    return TriageResult(method=method, boxes=boxes, images=images, notes=notes, metrics=list(metrics), figures=figures)


def _image_queue(
    dataset: Dataset, boxes: Sequence[TriageItem], metrics: Sequence[MetricScores], method: Method
) -> list[TriageItem]:
    by_image: dict[int, list[TriageItem]] = defaultdict(list)
    for box in boxes:  # already in queue order: an image's first box is its most suspicious
        by_image[box.image_id].append(box)
    image_metrics = [m for m in metrics if m.level == "image"]
    rows = []
    for image in dataset.images:
        own = by_image.get(image.id, [])
        top = own[0] if own else None
        rows.append(
            TriageItem(
                rank=0, level="image", image_id=image.id, annotation_id=None, file_name=image.file_name,
                category=None, bbox=None, suspicion=top.suspicion if top else 0.0, method=method,
                likely_error=top.likely_error if top else None,
                likely_error_probability=top.likely_error_probability if top else None,
                reasons=top.reasons if top else [], scores={m.name: m.scores.get(image.id) for m in image_metrics},
                boxes=[box.annotation_id for box in own if box.annotation_id is not None],
            )
        )  # fmt: skip
    rows.sort(key=lambda item: (-item.suspicion, item.image_id))
    return [row.model_copy(update={"rank": rank}) for rank, row in enumerate(rows, start=1)]


def _figures(truth: GroundTruth, scores: Mapping[int, float], budget: float) -> TriageFigures:
    carried = object_error_types(truth.errors)
    keys = list(truth.annotation_image)
    labels = [bool(carried.get(key)) for key in keys]
    values = [scores[key] for key in keys]
    reviewed = budget_items(len(keys), budget)
    positives = sum(labels)
    return TriageFigures(
        budget=budget,
        reviewed=reviewed,
        precision_at_budget=precision_at_k(values, labels, "high", reviewed),
        recall_at_5pct=recall_at_budget(values, labels, "high", 0.05),
        random_precision=positives / len(keys) if positives else None,
    )


# -- scoring, and the files -----------------------------------------------------------------------


def score_with_copies(
    document: dict[str, Any],
    dataset: Dataset,
    specs: Sequence[MetricSpec],
    *,
    sandbox: SandboxConfig,
    seeds: Sequence[int],
    rate: float,
    on_calls: Callable[[int], None] = lambda count: None,
) -> tuple[list[MetricScores], list[TrainingCopy], list[str]]:
    """The original's metric scores, one noisy copy per seed with its scores and its injected errors, and notes.

    The copies are drawn in triage's own stream (`STREAM`) and scored in the same run as the
    original, each distinct call once (`score_versions`). The notes say which of the original's calls
    failed (`failure_notes`): their boxes have no score, and would sit at the bottom unexplained.
    """
    scored = score_noisy_copies(
        document, dataset.annotations_path, dataset.image_root, specs,
        seeds=seeds, rate=rate, sandbox=sandbox, stream=STREAM, original=dataset, on_calls=on_calls,
    )  # fmt: skip
    directions = {spec.name: spec.suspicious for spec in specs}
    training = [
        TrainingCopy(scores_from_rows(copy.rows, directions), ground_truth(copy.dataset, copy.labels))
        for copy in scored.copies
    ]
    failures = failure_notes(
        scored.original or [],
        {image.id: image.file_name for image in dataset.images},
        over="",
        consequence="have no scores, so their place in the queue says nothing about them",
    )
    return scores_from_rows(scored.original or [], directions), training, failures


def run_triage(
    document: dict[str, Any],
    dataset: Dataset,
    specs: Sequence[MetricSpec],
    *,
    sandbox: SandboxConfig,
    seeds: Sequence[int],
    rate: float,
    known_errors: Sequence[ErrorLabel] | None = None,
    learn: Method = "injected",
    budget: float = 0.05,
    extra: Sequence[MetricScores] = (),
    on_calls: Callable[[int], None] = lambda count: None,
) -> TriageResult:
    """Score the dataset (and, to learn on, K noisy copies of it, in the same run) and build the queue.

    `extra`: more metrics' scores of the original (from score files), used only without injection.
    """
    if extra and learn == "injected":
        raise UserError("score files can't be scored on injected copies: learn from known errors or rank_average")
    original, training, failures = score_with_copies(
        document, dataset, specs, sandbox=sandbox, seeds=seeds if learn == "injected" else [], rate=rate,
        on_calls=on_calls,
    )  # fmt: skip
    result = triage_from_scores(
        dataset, [*original, *extra], training, known_errors if learn == "known_errors" else None, budget=budget
    )
    return dataclasses.replace(result, notes=[*result.notes, *failures])


def scores_of_rows(rows: Sequence[ScoreRow], directions: Mapping[str, Literal["high", "low"]]) -> list[MetricScores]:
    """Score-file rows as metric scores (the directions from the rows, else `directions`)."""
    known = dict(directions)
    for row in rows:
        if row.suspicious is not None:
            known.setdefault(row.metric, row.suspicious)
    return scores_from_rows(rows, known)


def write_jsonl(path: Path, result: TriageResult) -> None:
    with Path(path).open("w", encoding="utf-8") as out:
        for item in [*result.boxes, *result.images]:
            out.write(item.model_dump_json() + "\n")


def load_jsonl(path: Path) -> list[TriageItem]:
    """A triage.jsonl read back and checked; UserError naming the line otherwise."""
    items = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    for number, line in enumerate(lines, start=1):
        try:
            items.append(TriageItem.model_validate_json(line))
        except ValueError as exc:
            raise UserError(f"{path}: line {number} is not a triage item: {str(exc).splitlines()[0]}") from exc
    return items
