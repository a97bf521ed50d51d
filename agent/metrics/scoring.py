"""A scoring job: every metric over every image or box of a dataset, through the sandbox.

Pure glue between the dataset layer, the metric files and the sandbox engine: it builds one task
per image holding every call on that image (so each image is decoded once for all metrics), turns
engine results into rows keyed by annotation id, and summarises them per metric: counts, score
range, and the first failure of each kind.

A run may also hand its rows to a `RowWriter` instead of gathering them (`score --out DIR/`): rows
are then made where the results are (`RowMaker`, in a Ray actor or here) and only their `Tally`
reaches the summaries, so the summary is the same either way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import statistics
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, Protocol, cast

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agent.data.coco import Dataset
from agent.errors import UserError
from agent.metrics.contract import MetricSpec
from agent.metrics.inputs import metric_inputs
from agent.metrics.learned import (
    CLASS_CODES,
    MIN_TRAINING,
    TrainingCopy,
    cross_fitted_scores_each,
    fold_of,
    prepare_fits_in_background,
    training_copies,
)
from agent.metrics.neighbours import RowMapper, class_disagreement, in_threads
from sandbox.engine import BatchWriter, CallResult, Engine, RunReport, ScoringEngine, WritingEngine
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
    # 8 bytes a score, not a Python float's 32: a big job's driver keeps one per scored row, for the median.
    scores: array[float] = field(default_factory=lambda: array("d"))
    first_failures: dict[str, FirstFailure] = field(default_factory=dict)
    note: str | None = None  # why items have no score when the metric can say (a learned metric with nothing to learn)

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
    rows: list[ScoreRow]  # empty when a `RowWriter` wrote them
    expected_rows: int
    summaries: list[MetricSummary]
    layers: tuple[LayerStatus, ...]
    metric_errors: dict[str, str]
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return sum(summary.failed for summary in self.summaries)

    @property
    def row_count(self) -> int:
        """The rows the run made: in `rows`, or written as parts by a `RowWriter` (then `rows` is empty)."""
        return sum(summary.scored + summary.not_applicable + summary.failed for summary in self.summaries)


class RowColumns(BaseModel):
    """The columns a metric's rows repeat (`ScoreRow`): who the metric is, not what it scored."""

    model_config = ConfigDict(frozen=True)

    name: str
    level: str
    suspicious: Literal["high", "low"] | None
    code_sha256: str | None
    origin: str


class RowMaker(BaseModel):
    """Turns engine results into rows without the dataset: what a Ray actor needs to write its batch's part.

    A pydantic model because it crosses to the actors. `held` are the codes whose results are not rows
    yet: feature metrics', scored at the driver once every vector is in.
    """

    model_config = ConfigDict(frozen=True)

    columns: tuple[RowColumns, ...]  # per spec
    specs_of: tuple[tuple[int, ...], ...]  # per code: its specs, as `_Codes.specs_of`
    held: frozenset[int]

    @classmethod
    def of(cls, specs: Sequence[MetricSpec]) -> RowMaker:
        codes = _Codes.of(specs)
        return cls(
            columns=tuple(
                RowColumns(
                    name=spec.name,
                    level=spec.level,
                    suspicious=spec.suspicious,
                    code_sha256=spec.code_sha256,
                    origin=metric_origin(spec),
                )
                for spec in specs
            ),
            specs_of=codes.specs_of,
            held=frozenset(code for code, spec in enumerate(codes.codes) if spec.output == "features"),
        )

    def row(self, result: CallResult, index: int, annotation_id: int | None) -> ScoreRow:
        """The row of spec `index` for one result of its code."""
        columns = self.columns[index]
        return ScoreRow(
            metric=columns.name,
            level=columns.level,
            image_id=result.image_id,
            annotation_id=annotation_id,
            score=result.score,
            error_kind=result.kind,
            error=result.error,
            suspicious=columns.suspicious,
            code_sha256=columns.code_sha256,
            origin=columns.origin,  # one string per metric, shared by all its rows
        )

    def split(
        self, results: Iterable[CallResult], annotation_ids: Callable[[int], Sequence[int]]
    ) -> tuple[list[ScoreRow], list[CallResult], Tally]:
        """(the rows of the results that are rows already, the held results, the rows' tally)."""
        rows: list[ScoreRow] = []
        held: list[CallResult] = []
        tally = Tally()
        for result in results:
            if result.metric in self.held:
                held.append(result)
                continue
            annotation_id = None if result.obj is None else annotation_ids(result.image_id)[result.obj]
            for index in self.specs_of[result.metric]:
                row = self.row(result, index, annotation_id)
                tally.add(index, row)
                rows.append(row)
        return rows, held, tally


class MetricTally(BaseModel):
    """One metric's rows in one batch, as its `MetricSummary` counts them."""

    scored: int = 0
    not_applicable: int = 0
    failures: dict[str, int] = Field(default_factory=dict)
    scores: list[float] = Field(default_factory=list)
    # Per error kind, the batch's failed row that comes first in file order: (image, annotation, error's last line).
    first: dict[str, tuple[int, int | None, str]] = Field(default_factory=dict)


class Tally(BaseModel):
    """A batch's rows as the run summary needs them: what an actor sends the driver instead of the rows."""

    rows: int = 0
    metrics: dict[int, MetricTally] = Field(default_factory=dict)  # by spec index

    def add(self, index: int, row: ScoreRow) -> None:
        tally = self.metrics.setdefault(index, MetricTally())
        count_row(tally, row)
        self.rows += 1
        if row.error_kind is not None:
            known = tally.first.get(row.error_kind)
            if known is None or item_order(row) < (known[0], known[1] or 0):
                tally.first[row.error_kind] = (row.image_id, row.annotation_id, error_line(row.error))


def count_row(summary: MetricSummary | MetricTally, row: ScoreRow) -> None:
    """Count one row in its metric's summary (or a batch's tally of it)."""
    if row.error_kind is not None:
        summary.failures[row.error_kind] = summary.failures.get(row.error_kind, 0) + 1
    elif row.score is None:
        summary.not_applicable += 1
    else:
        summary.scored += 1
        summary.scores.append(row.score)


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


def require_an_image(dataset: Dataset) -> None:
    """Refuse a run in which no image is where the dataset says: a wrong image folder, not a run of failures.

    Stops at the first image found (one look on a dataset that has its images; no path of the others is
    worked out). Commands that do much before they score (selftest's and triage's injected copies) call it
    first themselves.
    """
    if not dataset.images:
        raise UserError(f"{dataset.annotations_path} lists no images: there is nothing to score")
    if not any(os.path.isfile(dataset.image_path(image.id)) for image in dataset.images):
        first = dataset.image_path(dataset.images[0].id)
        raise UserError(
            f"none of the {len(dataset.images)} images of {dataset.annotations_path} is in {dataset.image_root} "
            f"(the first would be {first}); give the folder that holds them with --images"
        )


@dataclass(frozen=True)
class _Codes:
    """The distinct metric codes among the specs: what the workers load and call, each once.

    Specs with the very same code (a learned file's metrics, one per error type) share one call per
    item; its result is then read once for each of them.
    """

    codes: tuple[MetricSpec, ...]  # one spec standing for each distinct code
    specs_of: tuple[tuple[int, ...], ...]  # each code's spec indices

    @classmethod
    def of(cls, specs: Sequence[MetricSpec]) -> _Codes:
        grouped: dict[tuple[str, str, str], list[int]] = {}
        for index, spec in enumerate(specs):
            grouped.setdefault((spec.code_sha256, spec.level, spec.output), []).append(index)
        return cls(
            codes=tuple(specs[indices[0]] for indices in grouped.values()),
            specs_of=tuple(tuple(indices) for indices in grouped.values()),
        )

    def engine_metrics(self) -> list[MetricCode]:
        metrics = []
        for code, spec in enumerate(self.codes):
            # A shared code is named by its file (a learned family); a code of one spec by that spec.
            name = spec.name if len(self.specs_of[code]) == 1 else (spec.family or spec.name)
            metrics.append(
                MetricCode(name=name, level=spec.level, source=spec.source, filename=spec.path, output=spec.output)
            )
        return metrics


def build_tasks(dataset: Dataset, specs: list[MetricSpec], paths: dict[int, str] | None = None) -> Iterator[ImageTask]:
    """One task per image with every call on it: image metrics once, object metrics per box.

    Calls name distinct codes (`_Codes`), not specs. A generator, so the engine can start its workers
    while the tasks are still being built.
    """
    paths = image_paths(dataset) if paths is None else paths
    codes = _Codes.of(specs).codes
    image_metrics = [Call(metric=index, obj=None) for index, spec in enumerate(codes) if spec.level == "image"]
    object_metrics = [index for index, spec in enumerate(codes) if spec.level == "object"]
    calls_for: dict[int, tuple[Call, ...]] = {}  # by box count: images with as many boxes share their calls
    for image in dataset.images:
        scene = dataset.scene(image.id)
        count = len(scene["annotations"])
        calls = calls_for.get(count)
        if calls is None:
            objects = range(count)
            calls = calls_for[count] = (*image_metrics, *(Call(i, obj) for i in object_metrics for obj in objects))
        if calls:
            # Built from checked data: validating it again (each call rebuilt) cost more than building it.
            yield ImageTask.model_construct(image_id=image.id, path=paths[image.id], scene=scene, calls=calls)


class _Training:
    """A dataset's learned metrics' training calls, and the corrupted boxes' vectors as they come back.

    Each learned code describes the corrupted boxes of the training copies (`agent.metrics.learned`) in
    their copy's scene. Those calls go to the workers as tasks of their own, with negative numbers (no
    image id is negative), each right after its image's own task so a worker decodes the image once.
    `numbers` deals the task numbers: -1, -2, ..., shared when several datasets train in one engine run.
    `processes`, the run's worker count, is how many the fits may use (`prepare_fits_in_background`).

    The copies are made on a thread of their own, started here, so the engine's workers need not wait
    for them: until they are ready, `_with_training` sends images without their training tasks and
    sends those later (their images are then decoded twice: a few dozen at the start of a big run).
    """

    def __init__(
        self,
        dataset: Dataset,
        specs: Sequence[MetricSpec],
        codes: _Codes,
        processes: int,
        numbers: Iterator[int] | None = None,
    ) -> None:
        self.learned = [code for code, spec in enumerate(codes.codes) if spec.combine == "learned"]
        errors = list(dict.fromkeys(e for code in self.learned for i in codes.specs_of[code] for e in specs[i].learns))
        self._copies: list[TrainingCopy] = []
        self._failure: BaseException | None = None
        self._making: threading.Thread | None = None
        if self.learned:
            prepare_fits_in_background(processes)
            self._making = threading.Thread(
                target=self._make_copies, args=(dataset, errors), name="training-copies", daemon=True
            )
            self._making.start()
        self._numbers = itertools.count(-1, -1) if numbers is None else numbers
        self._waiting: list[tuple[int, str]] = []  # (image id, path) of images whose training tasks wait
        self._where: dict[int, tuple[int, int]] = {}  # task number -> (copy, image id)
        # Per (code, error): (task number, box's place, image id, class id, vector) of each corrupted box described.
        self._described: dict[tuple[int, str], list[tuple[int, int, int, int, tuple[float, ...]]]] = {}

    def _make_copies(self, dataset: Dataset, errors: list[str]) -> None:
        try:
            self._copies = training_copies(dataset, errors)
        except BaseException as failure:  # raised where the copies are wanted, not lost on this thread
            self._failure = failure

    @property
    def ready(self) -> bool:
        """Whether the copies are made (asking never waits)."""
        return self._making is None or not self._making.is_alive()

    @property
    def copies(self) -> list[TrainingCopy]:
        """The training copies, once made (waits for them)."""
        if self._making is not None:
            self._making.join()
        if self._failure is not None:
            raise self._failure
        return self._copies

    def tasks_after(self, image_id: int, path: str) -> Iterator[ImageTask]:
        """The training tasks to send after an image's own task: its own, and those of earlier images that waited.

        None while the copies are still being made: the image waits for them, and `waiting_tasks` sends
        what is still waiting at the end.
        """
        self._waiting.append((image_id, path))
        if self.ready:
            yield from self.waiting_tasks()

    def waiting_tasks(self) -> Iterator[ImageTask]:
        waiting, self._waiting = self._waiting, []
        for image_id, path in waiting:
            yield from self._tasks_for(image_id, path)

    def _tasks_for(self, image_id: int, path: str) -> Iterator[ImageTask]:
        for copy_index, copy in enumerate(self.copies):
            if image_id not in copy.images:
                continue  # no corrupted box here: no scene to build
            scene = copy.dataset.scene(image_id)
            positions = [p for p, obj in enumerate(scene["annotations"]) if obj["id"] in copy.corrupted]
            if not positions:
                continue
            task = next(self._numbers)
            self._where[task] = (copy_index, image_id)
            calls = tuple(Call(metric=code, obj=position) for code in self.learned for position in positions)
            yield ImageTask.model_construct(image_id=task, path=path, scene=scene, calls=calls)

    def take(self, result: CallResult) -> bool:
        """Keep a training call's vector; False when the result is not a training call's."""
        where = self._where.get(result.image_id)
        if where is None:
            return False
        copy_index, image_id = where
        copy = self.copies[copy_index]
        if result.kind is None and result.features is not None and result.obj is not None:
            category = copy.dataset.objects_of(image_id)[result.obj]["category_id"]
            described = self._described.setdefault((result.metric, copy.error), [])
            described.append((result.image_id, result.obj, image_id, category, result.features))
        return True

    def vectors(self, code: int, error: str) -> list[tuple[int, int, tuple[float, ...]]]:
        """(image id, class id, vector) of each corrupted box `code` described for `error`, in the tasks' order.

        The workers answer in whatever order they finish; the order the classifiers see must not depend on it.
        """
        described = sorted(self._described.get((code, error), []), key=lambda row: (-row[0], row[1]))
        return [(image_id, category, vector) for _, _, image_id, category, vector in described]


def _with_training(
    dataset: Dataset, tasks: Iterable[ImageTask], training: _Training, paths: dict[int, str]
) -> Iterator[ImageTask]:
    """`tasks` (one per image at most, in the dataset's order), each image's training tasks right after its own.

    Walks the images rather than the tasks: an image without calls of its own may hold a spurious training box.
    While the training copies are still being made, images go without theirs (`_Training.tasks_after`).
    """
    pending = iter(tasks)
    upcoming = next(pending, None)
    for image in dataset.images:
        if upcoming is not None and upcoming.image_id == image.id:
            yield upcoming
            upcoming = next(pending, None)
        yield from training.tasks_after(image.id, paths[image.id])
    yield from training.waiting_tasks()


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


class RowWriter(BatchWriter, Protocol):
    """Where a run's rows go instead of `ScoreOutcome.rows` (`agent.metrics.parts.PartWriter`).

    As a `BatchWriter` it runs where a Ray actor scored a batch; `write` is the same for results that
    came back to this process (the local engine's), and `write_held` takes the feature metrics' rows,
    which only this process can score.
    """

    maker: RowMaker

    def write(
        self, batch: int, results: list[CallResult], annotation_ids: Callable[[int], Sequence[int]]
    ) -> tuple[list[CallResult], Tally]: ...

    def write_held(self, rows: list[ScoreRow]) -> None: ...


# Results of the local engine gathered before they are written as one part: big parts, a bounded buffer.
_RESULTS_PER_PART = 100_000


class _Collector:
    """Turns engine results into rows and keeps running summaries.

    Results name codes (`_Codes`); each becomes one row per spec with that code. A feature metric's
    results are held back until `finish()`: its scores compare every box's vector with every other
    one (or train on them), so none is known before the last vector arrives.

    With a `writer`, the other results' rows are not kept: they are written (here, or by the actors
    that scored them) and only their `Tally` is added to the summaries.
    """

    def __init__(
        self,
        dataset: Dataset,
        specs: list[MetricSpec],
        on_rows: Callable[[list[ScoreRow]], None],
        threads: int = 1,
        writer: RowWriter | None = None,
        on_written: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.dataset, self.specs, self.on_rows = dataset, specs, on_rows
        self.writer, self.on_written = writer, on_written
        self._unwritten: list[CallResult] = []
        self._parts = itertools.count()
        # Per spec index and error kind, the first failed row in file order among the written ones.
        self.tallied_firsts: dict[int, dict[str, tuple[int, int | None, str]]] = {}
        # Threads for the work after the sandbox workers are done: the learned fits, and the neighbour searches.
        self.threads = threads
        self.codes = _Codes.of(specs)
        self.rows: list[ScoreRow] = []
        self.summaries = [MetricSummary(name=spec.name, level=spec.level) for spec in specs]
        self.maker = RowMaker.of(specs)
        self._annotation_ids: dict[int, list[int]] = {}
        self._category_of: dict[int, int] | None = None
        self._map_rows: RowMapper | None = None
        self._held: dict[int, list[CallResult]] = {
            code: [] for code, spec in enumerate(self.codes.codes) if spec.output == "features"
        }

    def __call__(self, results: list[CallResult]) -> None:
        batch = []
        for result in results:
            held = self._held.get(result.metric)
            if held is not None:
                held.append(result)
            elif self.writer is not None:
                self._unwritten.append(result)
            else:
                batch.extend(self._row(result, index) for index in self.codes.specs_of[result.metric])
        self.rows.extend(batch)
        if batch:
            self.on_rows(batch)
        if len(self._unwritten) >= _RESULTS_PER_PART:
            self.flush()

    def flush(self) -> None:
        """Write the results gathered here (the local engine's) as one more part."""
        if self.writer is not None and self._unwritten:
            _, tally = self.writer.write(next(self._parts), self._unwritten, self._ids_of)
            self._unwritten = []
            self.add_tally(tally)

    def written(self, summary: str) -> None:
        """A batch an actor wrote (`BatchWriter`): its tally, as JSON."""
        self.add_tally(Tally.model_validate_json(summary))

    def add_tally(self, tally: Tally) -> None:
        for index, counted in tally.metrics.items():
            summary = self.summaries[index]
            summary.scored += counted.scored
            summary.not_applicable += counted.not_applicable
            summary.failures.update(counted.failures)
            summary.scores.extend(counted.scores)
            firsts = self.tallied_firsts.setdefault(index, {})
            for kind, first in counted.first.items():
                known = firsts.get(kind)
                if known is None or (first[0], first[1] or 0) < (known[0], known[1] or 0):
                    firsts[kind] = first
        self.on_written(tally.rows)

    def finish(self, training: _Training | None = None, map_rows: RowMapper | None = None) -> None:
        """Score the feature metrics from the vectors gathered, and emit their rows.

        `map_rows`: where the neighbour search runs (`agent.metrics.neighbours`); the scores do not depend on it.
        """
        self._map_rows = map_rows
        for code, results in self._held.items():
            # Results arrive in whatever order the workers finish; the scores must not depend on it.
            results.sort(key=lambda result: (result.image_id, result.obj or 0))
            indices = self.codes.specs_of[code]
            if self.codes.codes[code].combine == "learned":
                per_spec = self._learned_scores(code, indices, results, training)
            else:
                per_spec = [self._neighbour_scores(index, results) for index in indices]
            for index, scored in zip(indices, per_spec, strict=True):
                batch = [self._row(result, index) for result in scored]
                self.rows.extend(batch)
                self.on_rows(batch)
            results.clear()

    @staticmethod
    def _with_vectors(results: list[CallResult]) -> list[CallResult]:
        return [result for result in results if result.kind is None and result.features is not None]

    @staticmethod
    def _length_problem(lengths: set[int]) -> str | None:
        if len(lengths) < 2:
            return None
        return f"score() returned feature vectors of different lengths ({', '.join(map(str, sorted(lengths)))})"

    def _scored(
        self, results: list[CallResult], vectors: list[CallResult], scores: Sequence[float | None]
    ) -> list[CallResult]:
        scored = {id(result): score for result, score in zip(vectors, scores, strict=True)}
        return [dataclasses.replace(result, score=scored.get(id(result)), features=None) for result in results]

    def _failed(self, results: list[CallResult], message: str) -> list[CallResult]:
        return [
            dataclasses.replace(result, kind="invalid_output", error=message, features=None)
            if result.kind is None
            else result
            for result in results
        ]

    def _category(self, result: CallResult) -> int:
        if self._category_of is None:
            self._category_of = {annotation.id: annotation.category_id for annotation in self.dataset.annotations}
        return self._category_of[self._annotation_id(result)]  # type: ignore[index]

    def _neighbour_scores(self, index: int, results: list[CallResult]) -> list[CallResult]:
        vectors = self._with_vectors(results)
        problem = self._length_problem({len(result.features or ()) for result in vectors})
        if problem is not None:
            return self._failed(results, problem)
        categories = [self._category(result) for result in vectors]
        scores = class_disagreement(
            [result.features or () for result in vectors],
            categories,
            self.specs[index].neighbours,
            self._map_rows or in_threads(self.threads),
        )
        return self._scored(results, vectors, scores)

    def _learned_scores(
        self, code: int, indices: Sequence[int], results: list[CallResult], training: _Training | None
    ) -> list[list[CallResult]]:
        """Each spec's results for one learned code; the dataset's own vectors are gathered once for all of them."""
        vectors = self._with_vectors(results)
        corrupted = [
            [row for error in self.specs[i].learns for row in (training.vectors(code, error) if training else [])]
            for i in indices
        ]
        lengths = {len(result.features or ()) for result in vectors}
        lengths |= {len(vector) for rows in corrupted for _, _, vector in rows}
        problem = self._length_problem(lengths)
        if problem is not None:
            return [self._failed(results, problem) for _ in indices]
        classes = _class_codes(self.dataset)
        clean = _feature_rows(
            [result.features or () for result in vectors], [classes[self._category(result)] for result in vectors]
        )
        clean_images = [result.image_id for result in vectors]
        folds = fold_of([image.id for image in self.dataset.images])
        problems = [
            None
            if not vectors or not rows
            else (
                _feature_rows([vector for _, _, vector in rows], [classes[category] for _, category, _ in rows]),
                [image_id for image_id, _, _ in rows],
            )
            for rows in corrupted
        ]
        every_scores = cross_fitted_scores_each(clean, clean_images, problems, folds, threads=self.threads)
        for index, problem, scores in zip(indices, problems, every_scores, strict=True):
            self.summaries[index].note = self._unlearned(index, problem is None, scores)
        return [self._scored(results, vectors, scores) for scores in every_scores]

    def _unlearned(self, index: int, nothing_to_learn: bool, scores: Sequence[float | None]) -> str | None:
        """Why boxes of a learned metric have no score, if some have none: otherwise its n/a column says nothing."""
        unscored = sum(score is None for score in scores)
        if not unscored:
            return None
        if nothing_to_learn:
            learns = self.specs[index].learns
            why = f"no {' or '.join(learns)} error could be injected into this dataset to learn from"
            if "swap" in learns and len({a.category_id for a in self.dataset.annotations}) < 2:
                why += " (a single-class dataset: there is no other class to swap to)"
            return f"no box scored: {why}"
        return (
            f"{unscored} box{'es' if unscored != 1 else ''} not scored: the images outside their fold held fewer "
            f"than {MIN_TRAINING} corrupted or {MIN_TRAINING} clean boxes to learn from"
        )

    def _annotation_id(self, result: CallResult) -> int | None:
        return None if result.obj is None else self._ids_of(result.image_id)[result.obj]

    def _ids_of(self, image_id: int) -> list[int]:
        ids = self._annotation_ids.get(image_id)
        if ids is None:
            ids = self._annotation_ids[image_id] = self.dataset.annotation_ids(image_id)
        return ids

    def _row(self, result: CallResult, index: int) -> ScoreRow:
        row = self.maker.row(result, index, self._annotation_id(result))
        count_row(self.summaries[index], row)
        return row


def _feature_rows(vectors: Sequence[Sequence[float]], classes: Sequence[int]) -> NDArray[np.float64]:
    """The vectors (all of one length) as the rows of one matrix, each with its class code as a last column.

    Filled row by row from the vectors' own 8-byte floats: a matrix made from lists of Python floats
    would first hold four times its size in them, for every box of the dataset at once.
    """
    width = len(vectors[0]) if vectors else 0
    matrix = np.empty((len(vectors), width + 1))
    for row, vector in zip(matrix, vectors, strict=True):
        row[:width] = vector
    matrix[:, width] = classes
    return matrix


def _class_codes(dataset: Dataset) -> dict[int, int]:
    """Each category id as the classifier's categorical feature: 0, 1, ... by frequency; the rarest share the
    last code when there are more classes than `CLASS_CODES`."""
    counts = Counter(annotation.category_id for annotation in dataset.annotations)
    ranked = sorted({category.id for category in dataset.categories} | set(counts), key=lambda c: (-counts[c], c))
    return {category: min(rank, CLASS_CODES - 1) for rank, category in enumerate(ranked)}


def score_dataset(
    dataset: Dataset,
    specs: list[MetricSpec],
    config: SandboxConfig,
    on_rows: Callable[[list[ScoreRow]], None] = lambda rows: None,
    engine: Callable[[SandboxConfig], Engine] = ScoringEngine,
    writer: RowWriter | None = None,
    on_written: Callable[[int], None] = lambda count: None,
) -> ScoreOutcome:
    """Run every metric on the dataset in the sandbox. Ctrl-C returns what was scored, marked interrupted.

    `engine` makes the engine from the run's config: this machine's workers by default, or a Ray
    cluster's (`sandbox.distributed.RayEngine`); the rows are the same either way.

    With a `writer`, the rows are written as they come (by the Ray actors that scored them, when the
    engine can) instead of being gathered: the outcome's `rows` is then empty, its summaries the same.
    `on_written` counts the rows written so far.
    """
    require_an_image(dataset)
    paths = image_paths(dataset)
    collector = _Collector(dataset, specs, on_rows, config.workers, writer, on_written)
    training = _Training(dataset, specs, collector.codes, config.workers)
    tasks = _with_training(dataset, build_tasks(dataset, specs, paths), training, paths)

    def sink(results: list[CallResult]) -> None:
        collector([result for result in results if not training.take(result)])

    report, interrupted, used = _run_engine(dataset, specs, config, paths, tasks, sink, engine, collector)
    collector.flush()  # interrupted too: what was scored stays on disk
    if not interrupted:
        collector.finish(training, used.map_rows)
    outcome = _outcome(dataset, specs, collector, report, interrupted)
    if writer is not None:
        writer.write_held(outcome.rows)
        outcome.rows = []
    return outcome


def score_versions(
    versions: Sequence[Dataset],
    specs: list[MetricSpec],
    config: SandboxConfig,
    on_calls: Callable[[int], None] = lambda count: None,
    engine: Callable[[SandboxConfig], Engine] = ScoringEngine,
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
    # Per code, what its calls' results depend on besides the pixels: the scene, nothing, or some keys of the box.
    codes = _Codes.of(specs)
    plans: list[tuple[int, str, str, tuple[str, ...]]] = []
    for index, spec in enumerate(codes.codes):
        reads = metric_inputs(spec.source, spec.level)
        plans.append((index, spec.level, reads.depends_on(spec.level), tuple(sorted(reads.obj_keys or ()))))
    reads_scene = any(kind == "scene" for _, _, kind, _ in plans)
    require_an_image(first)
    paths = image_paths(first)
    # Per distinct key, its one real call: (task number, metric, object), as its result comes back.
    # Per version, each of its calls (metric, image id, object) with the real call that answers it.
    where: dict[Hashable, tuple[int, int, int | None]] = {}
    answered_by: list[list[tuple[int, int, int | None, tuple[int, int, int | None]]]] = [[] for _ in versions]
    task_count = 0
    # Each version's learned metrics train on copies of that version; their task numbers are negative, shared.
    training_numbers = itertools.count(-1, -1)
    trainings = [_Training(version, specs, codes, config.workers, training_numbers) for version in versions]

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
            for training in trainings:
                yield from training.tasks_after(image.id, paths[image.id])
        for training in trainings:
            yield from training.waiting_tasks()

    results: dict[tuple[int, int, int | None], CallResult] = {}

    def collect(batch: list[CallResult]) -> None:
        for result in batch:
            if result.image_id >= 0:
                results[(result.image_id, result.metric, result.obj)] = result
            else:
                for training in trainings:  # the one whose training task this is keeps it
                    if training.take(result):
                        break
        on_calls(len(batch))

    report, interrupted, used = _run_engine(first, specs, config, paths, distinct_tasks(), collect, engine)
    outcomes = []
    for version, version_calls, training in zip(versions, answered_by, trainings, strict=True):
        collector = _Collector(version, specs, lambda rows: None, threads=config.workers)
        own = []
        for metric, image_id, obj, real in version_calls:
            result = results.get(real)
            if result is not None:
                score, kind, error, features = result.score, result.kind, result.error, result.features
                own.append(CallResult(metric, image_id, obj, score, kind, error, features))
        collector(own)
        if not interrupted:
            collector.finish(training, used.map_rows)
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
    engine: Callable[[SandboxConfig], Engine] = ScoringEngine,
    collector: _Collector | None = None,
) -> tuple[RunReport, bool, Engine]:
    """One engine run over `tasks`, the workers allowed to read the dataset's images; (report, interrupted, engine).

    A collector with a writer hands it to an engine that writes where it scores (Ray's actors); with
    the local engine, the collector writes the rows itself as they come back.
    """
    roots = data_roots(dataset, paths.values())
    # No more workers than images: the tasks go an image (or its versions) at a time, and a worker costs its start.
    workers = min(config.workers, max(1, len(dataset.images)))
    config = config.model_copy(update={"read_only_paths": (*config.read_only_paths, *roots), "workers": workers})
    metrics = _Codes.of(specs).engine_metrics()
    used = engine(config)
    # Filled as the run goes: an interrupted run still tells which isolation layers its workers had.
    report = RunReport()
    try:
        if collector is not None and collector.writer is not None and used.writes_batches:
            writing = cast(WritingEngine, used)
            run = writing.run(metrics, tasks, sink, report, writer=collector.writer, on_written=collector.written)
            return run, False, used
        return used.run(metrics, tasks, sink, report), False, used
    except KeyboardInterrupt:
        return report, True, used


def _outcome(
    dataset: Dataset, specs: list[MetricSpec], collector: _Collector, report: RunReport, interrupted: bool
) -> ScoreOutcome:
    order = {spec.name: index for index, spec in enumerate(specs)}
    collector.rows.sort(key=lambda row: (order[row.metric], *item_order(row)))
    file_names = {image.id: image.file_name for image in dataset.images}
    found = first_failures(collector.rows, file_names)
    for index, summary in enumerate(collector.summaries):
        # A metric's rows are either all in `collector.rows` or all written: its first failures come from one.
        tallied = {
            kind: FirstFailure(kind, image_id, annotation_id, file_names.get(image_id), error)
            for kind, (image_id, annotation_id, error) in collector.tallied_firsts.get(index, {}).items()
        }
        summary.first_failures = found.get(summary.name) or tallied
    return ScoreOutcome(
        rows=collector.rows,
        expected_rows=count_calls(dataset, specs),
        summaries=collector.summaries,
        layers=report.layers,
        metric_errors=report.metric_errors,
        interrupted=interrupted,
    )
