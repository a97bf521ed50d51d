"""A scoring job: every metric over every image or box of a dataset, through the sandbox.

Pure glue between the dataset layer, the metric files and the sandbox engine: it builds one task
per image holding every call on that image (so each image is decoded once for all metrics), turns
engine results into rows keyed by annotation id, and summarises them per metric: counts, score
range, and the first failure of each kind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from agent.data.coco import Dataset
from agent.metrics.contract import MetricSpec
from agent.metrics.inputs import metric_inputs
from agent.metrics.neighbours import class_disagreement
from sandbox.engine import CallResult, RunReport, ScoringEngine
from sandbox.framing import PRINTED_MARKER
from sandbox.isolation import SandboxConfig
from sandbox.protocol import Call, ImageTask, LayerStatus, MetricCode


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """One (metric, item) result as written to the output file.

    A plain dataclass: a run makes one per item from results the engine has already validated.
    Rows read back from files are validated by `ROW_SCHEMA`.

    `suspicious`, `code_sha256` and `origin` describe the metric, not the item, and repeat on each of
    its rows, so a score file says on its own how to rank its scores and which code made them, even
    after `sort`, `grep` or concatenation. They are None in rows of files written before they
    existed, and in rows built by hand without a metric file (as tests do).
    """

    metric: str
    level: str
    image_id: int
    annotation_id: int | None
    score: float | None
    error_kind: str | None = None
    error: str | None = None
    suspicious: Literal["high", "low"] | None = None
    code_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    origin: str | None = None  # see `metric_origin`

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in ROW_COLUMNS}


# The metric's own columns come last, so the first seven keep the places they have always had.
ROW_COLUMNS = (
    "metric", "level", "image_id", "annotation_id", "score", "error_kind", "error",
    "suspicious", "code_sha256", "origin",
)  # fmt: skip
ROW_SCHEMA = TypeAdapter(ScoreRow)


def metric_origin(spec: MetricSpec) -> str:
    """Where a metric's code came from, as its rows record it: `builtin:NAME`, `lib:NAME@VERSION` or `file:PATH`.

    The first two are `--metric` references as they are (a library spec's path always names its
    version); PATH is the file as it was given, which with `code_sha256` is enough to find it again.
    """
    return spec.path if spec.origin in ("builtin", "library") else f"file:{spec.path}"


@dataclass(frozen=True, slots=True)
class FirstFailure:
    """The first item a metric failed on with one error kind, as the run summary shows it."""

    kind: str
    image_id: int
    annotation_id: int | None
    file_name: str | None
    error: str  # the last line of the traceback or message, e.g. "ZeroDivisionError: division by zero"

    def item(self) -> str:
        where = f"image {self.image_id}" + (f" ({self.file_name})" if self.file_name else "")
        return where if self.annotation_id is None else f"{where} annotation {self.annotation_id}"


@dataclass
class MetricSummary:
    name: str
    level: str
    scored: int = 0
    not_applicable: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)
    first_failures: dict[str, FirstFailure] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def failure_counts(self) -> list[tuple[str, int]]:
        """(kind, count), most frequent first; ties by name, not by which worker reported first."""
        return sorted(self.failures.items(), key=lambda item: (-item[1], item[0]))

    def quantiles(self) -> tuple[float, float, float] | None:
        if not self.scores:
            return None
        return min(self.scores), statistics.median(self.scores), max(self.scores)


@dataclass
class ScoreOutcome:
    rows: list[ScoreRow]
    expected_rows: int
    summaries: list[MetricSummary]
    layers: tuple[LayerStatus, ...]
    metric_errors: dict[str, str]
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return sum(summary.failed for summary in self.summaries)


def item_order(row: ScoreRow) -> tuple[int, int]:
    """Where a row sits among its metric's rows in an output file: by image, then by annotation id."""
    return row.image_id, row.annotation_id or 0


def error_line(error: str | None) -> str:
    """The last line of a row's error: an exception's type and message, without what the metric printed."""
    lines = (error or "").partition(PRINTED_MARKER)[0].strip().splitlines()
    return lines[-1].strip() if lines else ""


def first_failures(rows: Iterable[ScoreRow], file_names: Mapping[int, str]) -> dict[str, dict[str, FirstFailure]]:
    """Per metric, then per error kind, the failed row that comes first in the output file."""
    # Workers answer in whatever order they finish, so the first failure *received* changes from run to
    # run. The lowest item in file order is the same every time, whatever order `rows` come in, and it is
    # the first failed row of that kind the user meets on opening the file.
    firsts: dict[str, dict[str, ScoreRow]] = {}
    for row in rows:
        if row.error_kind is None:
            continue
        by_kind = firsts.setdefault(row.metric, {})
        known = by_kind.get(row.error_kind)
        if known is None or item_order(row) < item_order(known):
            by_kind[row.error_kind] = row
    return {
        metric: {
            kind: FirstFailure(
                kind=kind,
                image_id=row.image_id,
                annotation_id=row.annotation_id,
                file_name=file_names.get(row.image_id),
                error=error_line(row.error),
            )
            for kind, row in by_kind.items()
        }
        for metric, by_kind in firsts.items()
    }


def failure_lines(summary: MetricSummary, width: int) -> list[str]:
    """One line per error kind of the metric: how many, the first item, and its error's last line.

    Each line is cut to `width` characters: the summary is read on a terminal, the whole error is in the file.
    """
    lines = []
    for kind, count in summary.failure_counts():
        first = summary.first_failures.get(kind)
        line = f"{summary.name}: {count} {kind}"
        if first is not None:
            line += f", first at {first.item()}" + (f": {first.error}" if first.error else "")
        lines.append(line if len(line) <= width else line[: max(width - 1, 0)] + "…")
    return lines


def image_paths(dataset: Dataset) -> dict[int, str]:
    """Each image's real path (symlinks resolved): what the workers open, and must be allowed to read."""
    return {image.id: os.path.realpath(dataset.image_path(image.id)) for image in dataset.images}


def build_tasks(dataset: Dataset, specs: list[MetricSpec], paths: dict[int, str] | None = None) -> Iterator[ImageTask]:
    """One task per image with every call on it: image metrics once, object metrics per box.

    A generator, so the engine can start its workers while the tasks are still being built.
    """
    paths = image_paths(dataset) if paths is None else paths
    image_metrics = [Call(metric=index, obj=None) for index, spec in enumerate(specs) if spec.level == "image"]
    object_metrics = [index for index, spec in enumerate(specs) if spec.level == "object"]
    for image in dataset.images:
        scene = dataset.scene(image.id)
        objects = range(len(scene["annotations"]))
        calls = [*image_metrics, *(Call(metric=index, obj=obj) for index in object_metrics for obj in objects)]
        if calls:
            yield ImageTask(image_id=image.id, path=paths[image.id], scene=scene, calls=tuple(calls))


def count_calls(dataset: Dataset, specs: list[MetricSpec]) -> int:
    """How many rows a complete run writes."""
    per_image = sum(spec.level == "image" for spec in specs)
    per_object = sum(spec.level == "object" for spec in specs)
    return len(dataset.images) * per_image + len(dataset.annotations) * per_object


def data_roots(dataset: Dataset, paths: Iterable[str]) -> tuple[str, ...]:
    """The folders workers may read: the image root, plus where symlinked images really live."""
    roots = [os.path.realpath(dataset.image_root)]
    for path in paths:
        folder = os.path.dirname(path)
        if not any(folder == root or folder.startswith(root + os.sep) for root in roots):
            roots.append(folder)
    return tuple(roots)


class _Collector:
    """Turns engine results into rows and keeps running summaries.

    A feature metric's results are held back until `finish()`: its scores compare every box's
    vector with every other one, so none is known before the last vector arrives.
    """

    def __init__(self, dataset: Dataset, specs: list[MetricSpec], on_rows: Callable[[list[ScoreRow]], None]) -> None:
        self.dataset, self.specs, self.on_rows = dataset, specs, on_rows
        self.rows: list[ScoreRow] = []
        self.summaries = [MetricSummary(name=spec.name, level=spec.level) for spec in specs]
        # One string per metric, shared by all its rows rather than rebuilt for each.
        self._origins = [metric_origin(spec) for spec in specs]
        self._annotation_ids: dict[int, list[int]] = {}
        self._held: dict[int, list[CallResult]] = {i: [] for i, spec in enumerate(specs) if spec.output == "features"}

    def __call__(self, results: list[CallResult]) -> None:
        batch = []
        for result in results:
            held = self._held.get(result.metric)
            if held is None:
                batch.append(self._row(result))
            else:
                held.append(result)
        self.rows.extend(batch)
        if batch:
            self.on_rows(batch)

    def finish(self) -> None:
        """Score the feature metrics from the vectors gathered, and emit their rows."""
        for metric, results in self._held.items():
            batch = [self._row(result) for result in self._feature_scores(metric, results)]
            self.rows.extend(batch)
            self.on_rows(batch)
            results.clear()

    def _feature_scores(self, metric: int, results: list[CallResult]) -> list[CallResult]:
        # Results arrive in whatever order the workers finish; neighbours must not depend on it.
        results = sorted(results, key=lambda result: (result.image_id, result.obj or 0))
        vectors = [result for result in results if result.kind is None and result.features is not None]
        lengths = sorted({len(result.features or ()) for result in vectors})
        if len(lengths) > 1:
            message = f"score() returned feature vectors of different lengths ({', '.join(map(str, lengths))})"
            return [
                dataclasses.replace(result, kind="invalid_output", error=message) if result.kind is None else result
                for result in results
            ]
        category_of = {annotation.id: annotation.category_id for annotation in self.dataset.annotations}
        categories = [category_of[self._annotation_id(result)] for result in vectors]
        scores = class_disagreement(
            [result.features or () for result in vectors], categories, self.specs[metric].neighbours
        )
        scored = {id(result): score for result, score in zip(vectors, scores, strict=True)}
        return [dataclasses.replace(result, score=scored.get(id(result)), features=None) for result in results]

    def _annotation_id(self, result: CallResult) -> int | None:
        if result.obj is None:
            return None
        ids = self._annotation_ids.get(result.image_id)
        if ids is None:
            ids = self._annotation_ids[result.image_id] = self.dataset.annotation_ids(result.image_id)
        return ids[result.obj]

    def _row(self, result: CallResult) -> ScoreRow:
        spec = self.specs[result.metric]
        summary = self.summaries[result.metric]
        annotation_id = self._annotation_id(result)
        if result.kind is not None:
            summary.failures[result.kind] += 1
        elif result.score is None:
            summary.not_applicable += 1
        else:
            summary.scored += 1
            summary.scores.append(result.score)
        return ScoreRow(
            metric=spec.name,
            level=spec.level,
            image_id=result.image_id,
            annotation_id=annotation_id,
            score=result.score,
            error_kind=result.kind,
            error=result.error,
            suspicious=spec.suspicious,
            code_sha256=spec.code_sha256,
            origin=self._origins[result.metric],
        )


def score_dataset(
    dataset: Dataset,
    specs: list[MetricSpec],
    config: SandboxConfig,
    on_rows: Callable[[list[ScoreRow]], None] = lambda rows: None,
) -> ScoreOutcome:
    """Run every metric on the dataset in the sandbox. Ctrl-C returns what was scored, marked interrupted."""
    paths = image_paths(dataset)
    collector = _Collector(dataset, specs, on_rows)
    report, interrupted = _run_engine(dataset, specs, config, paths, build_tasks(dataset, specs, paths), collector)
    if not interrupted:
        collector.finish()
    return _outcome(dataset, specs, collector, report, interrupted)


def score_versions(
    versions: Sequence[Dataset],
    specs: list[MetricSpec],
    config: SandboxConfig,
    on_calls: Callable[[int], None] = lambda count: None,
) -> VersionsOutcome:
    """Score several versions of one dataset (the same images, other annotations), each distinct call once.

    A call's result is reused wherever the metric provably sees the same input
    (`agent.metrics.inputs`): the same image for an image metric that never reads the scene, the same
    image and the same values of the keys it reads for an object metric that never reads the scene,
    and otherwise the same image with the very same scene. Each version's outcome is then what
    `score_dataset` on it alone would give. The calls are run in one engine run, the versions of an
    image next to each other, so a worker decodes the image once for all of them. `on_calls` counts
    the calls that are really run (`VersionsOutcome.calls_run` of them).
    """
    first = versions[0]
    for version in versions[1:]:
        if version.image_root != first.image_root or version.images != first.images:
            raise ValueError("score_versions needs versions with the same images")
    # Per metric, what its calls' results depend on besides the pixels: the scene, nothing, or some keys of the box.
    plans: list[tuple[int, str, str, tuple[str, ...]]] = []
    for index, spec in enumerate(specs):
        reads = metric_inputs(spec.source, spec.level)
        kind = "scene" if reads.scene or reads.obj_keys is None else "pixels" if spec.level == "image" else "box"
        plans.append((index, spec.level, kind, tuple(sorted(reads.obj_keys or ()))))
    reads_scene = any(kind == "scene" for _, _, kind, _ in plans)
    paths = image_paths(first)
    # Per distinct key, its one real call: (task number, metric, object), as its result comes back.
    # Per version, each of its calls (metric, image id, object) with the real call that answers it.
    where: dict[Hashable, tuple[int, int, int | None]] = {}
    answered_by: list[list[tuple[int, int, int | None, tuple[int, int, int | None]]]] = [[] for _ in versions]
    task_count = 0

    def distinct_tasks() -> Iterator[ImageTask]:
        nonlocal task_count
        for image in first.images:
            for version, version_calls in zip(versions, answered_by, strict=True):
                scene = version.scene(image.id)
                objects = scene["annotations"]
                scene_digest = _digest(scene) if reads_scene else b""
                # repr tells 1 from 1.0, and a list of numbers from the same numbers in a tuple.
                shown: dict[tuple[int | None, tuple[str, ...]], tuple[str, ...]] = {}
                calls = []
                for index, level, kind, names in plans:
                    for obj in (None,) if level == "image" else range(len(objects)):
                        if kind == "scene":
                            key: Hashable = (index, image.id, scene_digest, obj)
                        elif kind == "pixels":
                            key = (index, image.id)
                        else:
                            values = shown.get((obj, names))
                            if values is None:
                                values = tuple(repr(objects[obj].get(name, _ABSENT)) for name in names)  # type: ignore[index]
                                shown[(obj, names)] = values
                            key = (index, image.id, values)
                        real = where.get(key)
                        if real is None:
                            real = where[key] = (task_count, index, obj)
                            calls.append(Call(metric=index, obj=obj))
                        version_calls.append((index, image.id, obj, real))
                if calls:
                    # The task's number stands in for the image id, so results say which version they are for.
                    # Built from checked data: validating each scene again would cost more than the calls.
                    yield ImageTask.model_construct(
                        image_id=task_count, path=paths[image.id], scene=scene, calls=tuple(calls)
                    )
                    task_count += 1

    results: dict[tuple[int, int, int | None], CallResult] = {}

    def collect(batch: list[CallResult]) -> None:
        for result in batch:
            results[(result.image_id, result.metric, result.obj)] = result
        on_calls(len(batch))

    report, interrupted = _run_engine(first, specs, config, paths, distinct_tasks(), collect)
    outcomes = []
    for version, version_calls in zip(versions, answered_by, strict=True):
        collector = _Collector(version, specs, lambda rows: None)
        own = []
        for metric, image_id, obj, real in version_calls:
            result = results.get(real)
            if result is not None:
                score, kind, error, features = result.score, result.kind, result.error, result.features
                own.append(CallResult(metric, image_id, obj, score, kind, error, features))
        collector(own)
        if not interrupted:
            collector.finish()
        outcomes.append(_outcome(version, specs, collector, report, interrupted))
    return VersionsOutcome(outcomes=outcomes, calls_run=len(results), calls_needed=sum(map(len, answered_by)))


@dataclass
class VersionsOutcome:
    outcomes: list[ScoreOutcome]  # one per version, in order
    calls_run: int  # score() calls really made
    calls_needed: int  # what scoring each version on its own would have made


_ABSENT = ("metricsmith: key absent",)  # what an absent key is shown as: no JSON value looks like it


def _digest(value: object) -> bytes:
    """A short fingerprint of JSON data (a scene); it tells 1 from 1.0."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _run_engine(
    dataset: Dataset,
    specs: list[MetricSpec],
    config: SandboxConfig,
    paths: dict[int, str],
    tasks: Iterable[ImageTask],
    sink: Callable[[list[CallResult]], None],
) -> tuple[RunReport, bool]:
    """One engine run over `tasks`, the workers allowed to read the dataset's images; (report, interrupted)."""
    roots = data_roots(dataset, paths.values())
    config = config.model_copy(update={"read_only_paths": (*config.read_only_paths, *roots)})
    metrics = [
        MetricCode(name=spec.name, level=spec.level, source=spec.source, filename=spec.path, output=spec.output)
        for spec in specs
    ]
    try:
        return ScoringEngine(config).run(metrics, tasks, sink), False
    except KeyboardInterrupt:
        return RunReport(), True


def _outcome(
    dataset: Dataset, specs: list[MetricSpec], collector: _Collector, report: RunReport, interrupted: bool
) -> ScoreOutcome:
    order = {spec.name: index for index, spec in enumerate(specs)}
    collector.rows.sort(key=lambda row: (order[row.metric], *item_order(row)))
    found = first_failures(collector.rows, {image.id: image.file_name for image in dataset.images})
    for summary in collector.summaries:
        summary.first_failures = found.get(summary.name, {})
    return ScoreOutcome(
        rows=collector.rows,
        expected_rows=count_calls(dataset, specs),
        summaries=collector.summaries,
        layers=report.layers,
        metric_errors=report.metric_errors,
        interrupted=interrupted,
    )
