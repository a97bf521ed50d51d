"""How well metrics find label errors in the user's own data, estimated on errors injected into it.

For each of K seeds, `agent.data.inject` writes known errors into a copy of the dataset, the metrics
score the copies in the sandbox (each distinct call once, see `run_selftest`), and
`agent.evaluation.ranking.evaluate` measures them. The report gives,
per metric and error type, the mean AP over the seeds, its spread (the standard deviation over the
seeds; 0 with one seed), a random ranking's AP, and the lift (mean AP over random's). These are
estimates on injected errors, which are not the errors the dataset really has: the report says so
wherever it is shown.

JSON schema (`SelftestReport`, what `metricsmith selftest --json` prints):

    {
      "estimate": "an estimate on injected errors, not the truth about the dataset's real errors",
      "dataset": "data/annotations.json",  "dataset_sha256": "<sha256 of that file>",
      "sample_images": null,                   # or N: measured on N of its images, drawn at random
      "seeds": [0, 1, 2],  "rate": 0.2,  "images": 120,  "annotations": 410,
      "errors_by_type": {"swap": 12, ...},     # injected per seed (the same count every seed)
      "calls": {"run": 5210, "without_reuse": 12906},  # score() calls made, and made without reuse
      "metrics": [{"metric": "box_tightness", "level": "object",
                   "ap": Figure, "by_type": {"shift": Figure, ...}}, ...],
      "notes": ["..."]
    }
    Figure = {"mean": AP, "spread": sd over seeds, "per_seed": [AP, ...], "random": random's AP, "lift": mean/random}

Every AP may be null where a seed had no positive of that kind; `lift` is null without a random AP.
The rows include the baselines `evaluate` adds: `random`, `combined` and `rank_average`.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from agent.data.coco import Dataset, coco_from_document
from agent.data.inject import Injection, Injector, errors_per_type
from agent.data.json_files import load_json_model
from agent.errors import UserError
from agent.evaluation.ranking import (
    ErrorLabel,
    EvaluationReport,
    evaluate,
    failure_notes,
    ground_truth,
    scores_from_rows,
)
from agent.metrics.contract import MetricSpec
from agent.metrics.scoring import ScoreRow, score_versions
from sandbox.engine import Engine, ScoringEngine
from sandbox.isolation import SandboxConfig

__all__ = [
    "BASELINES", "ESTIMATE", "WEAK_LIFT", "BestForType", "Calls", "Figure", "MetricFigures", "NoisyCopy",
    "ScoredCopies", "SelftestReport", "best_by_type", "load_selftest", "run_selftest", "sample_images",
    "score_noisy_copies", "summarise",
]  # fmt: skip

ESTIMATE = "an estimate on injected errors, not the truth about the dataset's real errors"


class Figure(BaseModel):
    mean: float | None
    spread: float | None
    per_seed: list[float | None]
    random: float | None
    lift: float | None


class MetricFigures(BaseModel):
    metric: str
    level: str
    ap: Figure
    by_type: dict[str, Figure]


class Calls(BaseModel):
    run: int
    without_reuse: int


class SelftestReport(BaseModel):
    estimate: str = ESTIMATE
    dataset: str  # the annotations file measured, as it was named
    dataset_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sample_images: int | None = None  # measured on this many of its images, drawn at random
    seeds: list[int]
    rate: float
    images: int
    annotations: int
    errors_by_type: dict[str, int]
    calls: Calls
    metrics: list[MetricFigures]
    notes: list[str] = []


def load_selftest(path: Path, annotations: Path) -> SelftestReport:
    """A `selftest --json` file, checked to be about `annotations` (the same bytes); UserError otherwise."""
    report = load_json_model(path, SelftestReport, "selftest")
    try:
        digest = hashlib.sha256(Path(annotations).read_bytes()).hexdigest()
    except OSError as exc:
        raise UserError(f"{annotations}: cannot read: {exc.strerror or exc}") from exc
    if digest != report.dataset_sha256:
        raise UserError(
            f"{path}: measured on {report.dataset}, which is not {annotations} (their sha256 differ); "
            "run selftest on this annotations file"
        )
    return report


def sample_images(document: dict[str, Any], count: int, seed: int = 0) -> dict[str, Any]:
    """The document cut to `count` images drawn at random (all of them when it has no more), with their annotations."""
    images = document["images"]
    if count >= len(images):
        return document
    picked = sorted(np.random.default_rng(seed).choice(len(images), size=count, replace=False).tolist())
    kept = [images[i] for i in picked]
    ids = {image["id"] for image in kept}
    annotations = [a for a in document["annotations"] if a["image_id"] in ids]
    return {**document, "images": kept, "annotations": annotations}


def numbered_by_image(documents: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[int, int]]]:
    """Each noisy copy with its annotations renumbered image by image; (copy, old id -> new id).

    `inject` numbers a copy's annotations 1..M in list order, so one drop or insertion shifts the id
    of every later annotation, and an image no injection touched still differs between copies in
    its ids: every metric that reads the scene would score it again for each seed. Here an
    annotation's id is its image's rank times 10^d plus its place among the image's annotations
    (1, 2, ...), d the same for all copies. An untouched image then reads the same in every copy.
    The place says no more than the list position does, which `inject` already draws at random for
    new annotations (the format-probe tests hold it to that), so no id tells which are injected.
    """
    per_image = [Counter(int(a["image_id"]) for a in document["annotations"]) for document in documents]
    most = max((max(counts.values(), default=0) for counts in per_image), default=0)
    step = 10 ** len(str(most + 1))
    renumbered = []
    for document in documents:
        rank = {int(image["id"]): index for index, image in enumerate(document["images"])}
        places: Counter[int] = Counter()
        new_id: dict[int, int] = {}
        annotations = []
        for annotation in document["annotations"]:
            image_id = int(annotation["image_id"])
            places[image_id] += 1
            new_id[int(annotation["id"])] = rank[image_id] * step + places[image_id]
            annotations.append({**annotation, "id": new_id[int(annotation["id"])]})
        renumbered.append(({**document, "annotations": annotations}, new_id))
    return renumbered


BASELINES = ("random", "combined", "rank_average")  # rows `evaluate` adds: no metric a user could pick
WEAK_LIFT = 2.0  # below twice random's AP, a "best" metric is hardly better than chance


@dataclass(frozen=True)
class BestForType:
    error: str
    metric: str
    level: str
    figure: Figure  # its figure on that type: mean AP over the seeds, random's, the lift
    # The pick made without each seed in turn, measured on that seed: AP per left-out seed, their mean and
    # lift. None with one seed. `figure` is the best of many on the very seeds it is shown on, so it flatters.
    left_out: Figure | None = None
    left_out_picks: tuple[str, ...] = ()  # the metric picked for each left-out seed, in seed order

    @property
    def picks_vary(self) -> bool:
        """Whether some left-out seed's pick was another metric than `metric`: then the picks are worth showing."""
        return any(picked != self.metric for picked in self.left_out_picks)

    @property
    def judged_lift(self) -> float | None:
        """The lift to judge the type by: the left-out one where there is one (it was not selected on)."""
        return self.left_out.lift if self.left_out is not None else self.figure.lift


def best_by_type(report: SelftestReport) -> list[BestForType]:
    """Per injected error type, the metric (no baseline) whose mean AP on it has the highest lift over random's.

    Lift, not AP: an image metric's per-type AP ranks images, whose prevalence is other than the boxes'.
    Ties go to the higher AP, then the name. A type no metric has a lift for is left out.

    The best of twenty metrics on three seeds is partly the luckiest: its AP on those seeds is an
    optimistic estimate of what picking a metric this way gives. So, with two seeds or more, each seed
    is left out in turn, the pick is made on the others, and that pick's AP on the left-out seed is
    kept (`left_out`): a figure measured on data the choice did not see.
    """
    best = []
    for error in report.errors_by_type:
        rows = [
            row
            for row in report.metrics
            if row.metric not in BASELINES and error in row.by_type and row.by_type[error].lift is not None
        ]
        pick = _pick(rows, error, keep=None)
        if pick is None:
            continue
        seeds = len(pick.by_type[error].per_seed)
        left_out: Figure | None = None
        picks: list[str] = []
        if seeds > 1:
            values, randoms = [], []
            for seed in range(seeds):
                chosen = _pick(rows, error, keep=[i for i in range(seeds) if i != seed])
                if chosen is None:
                    continue
                picks.append(chosen.metric)
                values.append(chosen.by_type[error].per_seed[seed])
                randoms.append(chosen.by_type[error].random)
            left_out = _figure(values, randoms) if values else None
        best.append(BestForType(error, pick.metric, pick.level, pick.by_type[error], left_out, tuple(picks)))
    return best


def _pick(rows: Sequence[MetricFigures], error: str, keep: Sequence[int] | None) -> MetricFigures | None:
    """The row with the highest lift on `error` over the seeds at the places `keep` (all of them when None)."""
    candidates = []
    for row in rows:
        figure = row.by_type[error]
        values = figure.per_seed if keep is None else [figure.per_seed[i] for i in keep]
        known = [v for v in values if v is not None]
        if not known or not figure.random:
            continue
        mean = statistics.fmean(known)
        candidates.append((-(mean / figure.random), -mean, row.metric, row))
    return min(candidates, key=lambda c: c[:3])[3] if candidates else None


def _figure(values: Sequence[float | None], randoms: Sequence[float | None]) -> Figure:
    known = [v for v in values if v is not None]
    chance = [r for r in randoms if r is not None]
    mean = statistics.fmean(known) if known else None
    random = statistics.fmean(chance) if chance else None
    spread = statistics.stdev(known) if len(known) > 1 else (0.0 if known else None)
    lift = mean / random if mean is not None and random else None
    return Figure(mean=mean, spread=spread, per_seed=list(values), random=random, lift=lift)


def summarise(reports: Sequence[EvaluationReport]) -> list[MetricFigures]:
    """Per metric row of the reports (one report per seed): AP and per-type AP over the seeds, beside random's."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for report in reports:
        for row in report.metrics:
            rows.setdefault((row.metric, row.level), []).append(row)
    figures = []
    for (metric, level), per_seed in rows.items():
        randoms = rows.get(("random", level), [])
        types = list(dict.fromkeys(t for row in per_seed for t in row.ap_by_type))
        by_type = {
            t: _figure([row.ap_by_type.get(t) for row in per_seed], [r.ap_by_type.get(t) for r in randoms])
            for t in types
        }
        ap = _figure([row.ap for row in per_seed], [r.ap for r in randoms])
        figures.append(MetricFigures(metric=metric, level=level, ap=ap, by_type=by_type))
    return figures


@dataclass(frozen=True)
class NoisyCopy:
    """One seed's injected copy, numbered by image; its errors under those numbers, and its score rows."""

    injection: Injection
    dataset: Dataset
    labels: list[ErrorLabel]
    rows: list[ScoreRow]


@dataclass(frozen=True)
class ScoredCopies:
    original: list[ScoreRow] | None  # the original's rows, when it was scored in the same run
    copies: list[NoisyCopy]
    calls_run: int
    calls_needed: int


def score_noisy_copies(
    document: dict[str, Any],
    annotations_path: Path,
    image_root: Path,
    specs: Sequence[MetricSpec],
    *,
    seeds: Sequence[int],
    rate: float,
    sandbox: SandboxConfig,
    stream: str = "inject",
    original: Dataset | None = None,
    on_calls: Callable[[int], None] = lambda count: None,
    engine: Callable[[SandboxConfig], Engine] = ScoringEngine,
) -> ScoredCopies:
    """Inject once per seed (in `stream`) and score every noisy copy, and `original` if given, in one run.

    The copies are numbered by image (`numbered_by_image`), so `score_versions` makes each distinct
    call once. Ctrl-C during the run raises KeyboardInterrupt: figures from part of the calls would lie.
    `engine` is this machine's sandboxed workers unless given (`benchmarks/selftest_calls.py` counts calls instead).
    """
    injector = Injector(document)
    injections = [injector.inject(rate=rate, seed=seed, stream=stream) for seed in seeds]
    copies = numbered_by_image([injection.document for injection in injections])
    noisy = [coco_from_document(copy, annotations_path, image_root) for copy, _ in copies]
    versions = noisy if original is None else [original, *noisy]
    scored = score_versions(versions, list(specs), sandbox, on_calls=on_calls, engine=engine)
    if any(outcome.interrupted for outcome in scored.outcomes):
        raise KeyboardInterrupt
    outcomes = scored.outcomes if original is None else scored.outcomes[1:]
    results = []
    for injection, (_, new_id), version, outcome in zip(injections, copies, noisy, outcomes, strict=True):
        labels = [
            ErrorLabel(
                type=r.type,
                image_id=r.image_id,
                annotation_id=None if r.annotation_id is None else new_id[r.annotation_id],
            )
            for r in injection.errors.errors
        ]
        results.append(NoisyCopy(injection, version, labels, outcome.rows))
    return ScoredCopies(
        original=None if original is None else scored.outcomes[0].rows,
        copies=results,
        calls_run=scored.calls_run,
        calls_needed=scored.calls_needed,
    )


def run_selftest(
    document: dict[str, Any],
    annotations_path: Path,
    image_root: Path,
    specs: Sequence[MetricSpec],
    *,
    seeds: Sequence[int],
    rate: float,
    sandbox: SandboxConfig,
    sample_images: int | None = None,
    on_calls: Callable[[int], None] = lambda count: None,
) -> SelftestReport:
    """Inject once per seed, score all the noisy copies in one run, and evaluate each; the figures over the seeds.

    `annotations_path` is the file `document` was read from (cut to `sample_images` images, when
    given). The copies share their images and most boxes, so `score_versions` makes each distinct
    call once: a box no injection touched is scored once for all seeds by a metric that reads
    nothing but its own box (`agent.metrics.inputs`).
    """
    per_type, why = errors_per_type(document, rate)
    if per_type == 0:  # before any scoring: a table of dashes would take minutes to say nothing
        raise UserError(f"{annotations_path}: nothing to measure: {why[-1]}")
    scored = score_noisy_copies(
        document, annotations_path, image_root, specs, seeds=seeds, rate=rate, sandbox=sandbox, on_calls=on_calls
    )
    directions = {spec.name: spec.suspicious for spec in specs}
    reports, notes = [], []
    for copy in scored.copies:
        notes.extend(note for note in copy.injection.notes if note not in notes)
        reports.append(evaluate(ground_truth(copy.dataset, copy.labels), scores_from_rows(copy.rows, directions)))
    return SelftestReport(
        dataset=str(annotations_path),
        dataset_sha256=hashlib.sha256(Path(annotations_path).read_bytes()).hexdigest(),
        sample_images=sample_images,
        seeds=list(seeds),
        rate=rate,
        images=len(document["images"]),
        annotations=len(document["annotations"]),
        errors_by_type=reports[-1].items.errors_by_type if reports else {},
        calls=Calls(run=scored.calls_run, without_reuse=scored.calls_needed),
        metrics=summarise(reports),
        notes=[
            *notes,
            *failure_notes(
                [row for copy in scored.copies for row in copy.rows],
                {image["id"]: image["file_name"] for image in document["images"]},
                over=f"over the {len(scored.copies)} copies",
                consequence="rank as least suspicious in every figure",
            ),
        ],
    )
