"""The scoring engine on a Ray cluster: Ray Data hands batches of image tasks to a pool of actors.

`RayEngine.run` has the local engine's contract (metrics, tasks, a sink for results, a RunReport),
so everything above it, rows, the neighbour step and the learned metrics, is the very same code
whichever engine ran the calls. Design:

- The tasks are cut into batches of `batch_images` tasks, numbered in order: the batch key. Each
  batch is one row of a Ray dataset (and one block), and `map_batches` sends each to an actor of a
  fixed-size pool (`ActorPoolStrategy`). A batch is made on the driver, not by Ray, so that a batch
  Ray runs again holds exactly the same tasks under the same key.
- Each actor owns one local `ScoringEngine` run with one sandboxed worker, started with the same
  `SandboxConfig` and so every layer, and kept alive across batches through a `TaskFeed`. The run
  lives on a thread of its own that lasts as long as the actor: bwrap's `--die-with-parent` is a
  PR_SET_PDEATHSIG, which fires when the *thread* that spawned it ends, and Ray may call `__call__`
  on a different thread from `__init__`. The worker is in its own session, out of reach of Ray's
  process-group cleanup, so it is that death signal (or, without bwrap, the worker's own watch on
  its parent) that ends it when the actor is killed.
- Within an actor, crashes, hangs and junk are the local engine's business, handled exactly as
  locally: a failing call is a result row, never an exception, so Ray never sees a metric fail.
- An actor killed mid-batch is restarted by Ray and the batch retried whole (at-least-once), so the
  driver keeps the first answer for each batch key and drops repeats: each call is reported once.
- With a `BatchWriter` (`metricsmith score --out DIR/`), the actor hands it each batch's results and
  sends the driver only what it returns: the results the driver still needs (feature vectors) and a
  summary. The writer names what it writes by the batch key, so a retried batch replaces its own.
- The machine failing on a node (a worker that can't start, a demanded layer missing) comes back as a
  failure row, not an exception: Ray Data would hand the driver a UserCodeException with the
  original's type and message only in a traceback's text. The driver raises it as the local engine would.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import ray
from pydantic import TypeAdapter

from sandbox.engine import (
    BatchWriter,
    CallResult,
    ClusterUnreachable,
    OutputUnwritable,
    RunReport,
    ScoringEngine,
    TaskFeed,
    WorkerStartFailed,
    compact_features,
)
from sandbox.isolation import IsolationUnavailable, SandboxConfig, planned_layers
from sandbox.protocol import Call, ImageTask, LayerStatus, MetricCode

__all__ = ["ClusterUnreachable", "RayEngine", "RayTimings", "connected"]

_METRICS = TypeAdapter(list[MetricCode])
_LAYERS = TypeAdapter(tuple[LayerStatus, ...])
# Object store for a Ray started by a run: small, since only batches of task JSON and results pass through it.
_LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
_AUTH_HINT = (
    "; if the cluster uses token authentication (`ray start`'s default), "
    "set RAY_AUTH_MODE=token and give this machine its token (~/.ray/auth_token)"
)


@dataclass
class RayTimings:
    """Where a run's wall time went, so a benchmark can report the startup cost on its own."""

    connect_s: float = 0.0  # ray.init: connecting, or starting a local instance
    first_result_s: float = 0.0  # from connected to the first batch back: actors and workers starting
    total_s: float = 0.0
    batches: int = 0
    duplicates_dropped: int = 0  # batches Ray ran twice (an actor died), kept once


@dataclass
class RayEngine:
    """Runs metrics over image tasks on a Ray cluster, one sandboxed worker per actor.

    `address` None starts a local Ray instance for the run and stops it afterwards, unless this
    process is already connected to one, which is then used as it is. `workers_per_node` None means
    one actor per CPU Ray offers.
    """

    config: SandboxConfig
    address: str | None = None
    workers_per_node: int | None = None
    batch_images: int = 32
    # Batches in flight per actor, run at once: while one batch's results are encoded (and written,
    # with --out DIR/) and handed back, the next is already queued at the worker, which would
    # otherwise wait between batches. `_SandboxActor.__call__` is thread-safe for this.
    calls_per_actor: int = 2
    # The feature metrics' neighbour search is spread over the cluster in Ray tasks of this many rows;
    # a smaller table is searched in the driver, where a task's overhead would cost more than it saves.
    neighbour_rows_per_task: int = 20_000
    timings: RayTimings = field(default_factory=RayTimings)
    writes_batches = True  # `run` takes a BatchWriter and runs it in the actors (`sandbox.engine.WritingEngine`)

    def __post_init__(self) -> None:
        # Checked on the driver before anything starts, as the local engine does; each actor checks its own node again.
        self.layers = planned_layers(self.config)

    def run(
        self,
        metrics: list[MetricCode],
        tasks: Iterable[ImageTask],
        sink: Callable[[list[CallResult]], None],
        report: RunReport | None = None,
        writer: BatchWriter | None = None,
        on_written: Callable[[str], None] = lambda summary: None,
    ) -> RunReport:
        """Score every call of every task on the cluster; hand results to `sink` as batches come back.

        With a `writer`, each actor runs it on its batch's results: `sink` then gets only the results
        it returns, and `on_written` each batch's summary, once per batch key.
        """
        report = report if report is not None else RunReport()
        self.timings = RayTimings()
        started = time.monotonic()
        with connected(self.address):
            connected_at = time.monotonic()
            self.timings.connect_s = connected_at - started
            rows = [{"batch": key, "tasks": _encode_tasks(batch)} for key, batch in enumerate(self._batches(tasks))]
            if rows:
                self._score(metrics, rows, sink, report, connected_at, writer, on_written)
        self.timings.total_s = time.monotonic() - started
        return report

    def _batches(self, tasks: Iterable[ImageTask]) -> Iterator[list[ImageTask]]:
        pending = iter(tasks)
        while batch := list(itertools.islice(pending, self.batch_images)):
            yield batch

    def _score(
        self,
        metrics: list[MetricCode],
        rows: list[dict[str, Any]],
        sink: Callable[[list[CallResult]], None],
        report: RunReport,
        connected_at: float,
        writer: BatchWriter | None,
        on_written: Callable[[str], None],
    ) -> None:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws its own progress bar from the sink
        # Ray Data logs each execution's plan at INFO; failures reach the user as exceptions, not logs.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        actors, cpus_per_actor = self._pool_size(len(rows))  # a row per batch
        # One batch per block and per call: Ray's own batching could otherwise cut or join the driver's batches.
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        scored = dataset.map_batches(
            _SandboxActor,
            fn_constructor_kwargs={
                "config_json": self.config.model_dump_json(),
                "metrics_json": _METRICS.dump_json(metrics).decode(),
                "writer": writer,
            },
            compute=ray.data.ActorPoolStrategy(
                size=actors,
                max_concurrent_calls_per_actor=self.calls_per_actor,
                enable_true_multi_threading=self.calls_per_actor > 1,
            ),
            batch_size=1,
            batch_format="numpy",
            num_cpus=cpus_per_actor,
        )
        seen: set[int] = set()
        restarts: dict[str, int] = {}
        for answers in scored.iter_batches(batch_format="numpy", batch_size=None):
            if not self.timings.batches:
                self.timings.first_result_s = time.monotonic() - connected_at
            for failure in answers["failure"]:
                if failure:
                    raise _machine_failure(failure)
            columns = (answers[name] for name in ("batch", "results", "report", "summary", "calls"))
            for key, encoded, actor_report, summary, calls in zip(*columns, strict=True):
                if actor_report:
                    _merge_report(report, orjson.loads(actor_report), restarts)
                if int(key) in seen:
                    self.timings.duplicates_dropped += 1
                    continue
                seen.add(int(key))
                self.timings.batches += 1
                report.calls_done += int(calls)
                if summary:
                    on_written(summary)
                sink(_decode_results(encoded))
        report.worker_restarts = sum(restarts.values())

    def map_rows(self, function: Callable[..., np.ndarray], columns: np.ndarray, k: int) -> np.ndarray:
        """The neighbour table (`agent.metrics.neighbours.RowMapper`), its row ranges computed in Ray tasks.

        Each row's answer depends on that row and the columns only, and every node runs the same numpy
        arithmetic, so the table equals the one computed in one process.
        """
        count = columns.shape[1]
        ranges = math.ceil(count / self.neighbour_rows_per_task)
        if ranges <= 1:
            return function(columns, 0, count, k)
        bounds = [round(count * index / ranges) for index in range(ranges + 1)]
        with connected(self.address):
            search = ray.remote(num_cpus=1)(function)
            shared = ray.put(columns)
            parts = ray.get([search.remote(shared, start, stop, k) for start, stop in itertools.pairwise(bounds)])
        return np.concatenate(parts)

    def _pool_size(self, batches: int) -> tuple[int, float]:
        """(actors, CPUs per actor): `workers_per_node` on each node, or one per CPU; never more than the batches."""
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        cpus = [node.get("Resources", {}).get("CPU", 0.0) for node in nodes]
        batches = max(1, batches)
        if self.workers_per_node is None:
            return max(1, min(batches, int(sum(cpus)))), 1.0
        # Fractional CPUs, so that N actors fit on the smallest node however many cores it has.
        per_actor = min(1.0, min(cpus or [1.0]) / self.workers_per_node)
        return max(1, min(batches, self.workers_per_node * max(len(nodes), 1))), per_actor


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """A Ray connection for a job: the existing one, a new one to `address`, or a local instance.

    Held around a whole `score_dataset`, it serves both the scoring and the neighbour search; each
    RayEngine call otherwise connects (or starts a local Ray) for itself.
    """
    if ray.is_initialized():
        yield
        return
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if address is None:
        # "local": a new instance, never one that `ray start` left running on this machine.
        ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=_LOCAL_OBJECT_STORE_BYTES, **quiet)
    else:
        _check_reachable(address)
        try:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        except (ConnectionError, RuntimeError, TimeoutError) as error:
            # Ray turns token authentication on for an explicit address only when told to.
            hint = "" if os.environ.get("RAY_AUTH_MODE") else _AUTH_HINT
            raise ClusterUnreachable(f"cannot connect to the Ray cluster at {address}: {error}{hint}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail in a second with one line when nothing listens at HOST:PORT, rather than in Ray's long retries."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(f"--address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as error:
        raise ClusterUnreachable(
            f"cannot reach the Ray cluster at {address}: {error.strerror or error}; "
            "start it with `ray start --head` or check --address"
        ) from None


# The machine failing on a node, sent back as data: an exception raised in an actor reaches the driver as
# Ray Data's UserCodeException, its type and message left only in a traceback's text.
_MACHINE_FAILURES: dict[str, type[Exception]] = {
    "WorkerStartFailed": WorkerStartFailed,
    "IsolationUnavailable": IsolationUnavailable,
    "OutputUnwritable": OutputUnwritable,
}


def _machine_failure(encoded: str) -> Exception:
    failure = orjson.loads(encoded)
    return _MACHINE_FAILURES[failure["type"]](failure["message"])


def _merge_report(report: RunReport, actor_report: dict[str, Any], restarts: dict[str, int]) -> None:
    if not report.layers:
        report.layers = _LAYERS.validate_python(actor_report["layers"])
    report.metric_errors.update(actor_report["metric_errors"])
    restarts[actor_report["actor"]] = actor_report["worker_restarts"]  # a running count per actor


# -- tasks and results on the wire: orjson, which writes every float so that it reads back bit for bit --


def _encode_tasks(tasks: list[ImageTask]) -> bytes:
    return orjson.dumps(
        [
            {"image_id": t.image_id, "path": t.path, "scene": t.scene, "calls": [(c.metric, c.obj) for c in t.calls]}
            for t in tasks
        ]
    )


def _decode_tasks(data: bytes) -> list[ImageTask]:
    # Built by this module from tasks already checked on the driver; validating each scene again costs more.
    return [
        ImageTask.model_construct(
            image_id=fields["image_id"],
            path=fields["path"],
            scene=fields["scene"],
            calls=tuple(Call(metric, obj) for metric, obj in fields["calls"]),
        )
        for fields in orjson.loads(data)
    ]


def _encode_results(results: list[CallResult]) -> str:
    return orjson.dumps(
        [[r.metric, r.image_id, r.obj, r.score, r.kind, r.error, r.features] for r in results],
        default=_array_as_list,
        option=orjson.OPT_SERIALIZE_NUMPY,
    ).decode()


def _array_as_list(value: object) -> list[float]:
    """orjson's fallback for a feature vector as the engine holds it (an array.array of floats)."""
    if isinstance(value, array):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _decode_results(data: str) -> list[CallResult]:
    return [
        CallResult(metric, image_id, obj, score, kind, error, compact_features(features))
        for metric, image_id, obj, score, kind, error, features in orjson.loads(data)
    ]


# -- the actor -------------------------------------------------------------------------------


@dataclass
class _Lane:
    """One local engine run inside an actor: its feed, its thread, and which metrics it scores."""

    feed: TaskFeed
    metrics: tuple[int, ...]  # the run's metric i is the job's metric metrics[i]
    report: RunReport = field(default_factory=RunReport)
    thread: threading.Thread | None = None


class _SandboxActor:
    """A Ray Data actor: batches of tasks in, their results out, through sandboxed workers it keeps.

    With shared workers (the default) it holds one run of one worker for every metric; with
    `share_workers=False` one run per metric, as the local engine's separate pools. With a `writer`,
    a batch's results go through it here, and only what it returns goes out.
    """

    def __init__(self, config_json: str, metrics_json: str, writer: BatchWriter | None = None) -> None:
        self._writer = writer
        config = SandboxConfig.model_validate_json(config_json).model_copy(update={"workers": 1})
        metrics = _METRICS.validate_json(metrics_json)
        self._name = f"{os.uname().nodename}:{os.getpid()}"
        self._done = threading.Condition()
        self._results: dict[int, list[CallResult]] = {}
        self._failure: BaseException | None = None
        groups = [tuple(range(len(metrics)))] if config.share_workers else [(index,) for index in range(len(metrics))]
        self._lanes = [_Lane(feed=TaskFeed(), metrics=group) for group in groups]
        for lane in self._lanes:
            lane_metrics = [metrics[index] for index in lane.metrics]
            lane.thread = threading.Thread(
                target=self._serve, args=(config, lane_metrics, lane), name="metricsmith-engine", daemon=True
            )
            lane.thread.start()

    def _serve(self, config: SandboxConfig, metrics: list[MetricCode], lane: _Lane) -> None:
        """The lane's engine run: it spawns the worker, so this thread must live as long as the actor."""
        try:
            ScoringEngine(config).run(metrics, lane.feed, self._sink_for(lane), report=lane.report)
        except BaseException as error:  # handed to the batch waiting for it, as Ray reports a node's failure
            with self._done:
                self._failure = error
                self._done.notify_all()

    def _sink_for(self, lane: _Lane) -> Callable[[list[CallResult]], None]:
        renumber = lane.metrics != tuple(range(len(lane.metrics)))

        def sink(results: list[CallResult]) -> None:
            with self._done:
                for result in results:
                    if renumber:
                        result = CallResult(
                            lane.metrics[result.metric],
                            result.image_id,
                            result.obj,
                            result.score,
                            result.kind,
                            result.error,
                            result.features,
                        )
                    self._results.setdefault(result.image_id, []).append(result)
                self._done.notify_all()

        return sink

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each row of `batch` is one of the driver's batches: its key and its tasks.

        Two calls may run at once, on Ray's threads: each feeds its tasks to the same lanes and waits
        for its own images' results (image ids are unique in a job, so the calls never share one).
        """
        keys = [int(key) for key in batch["batch"]]
        batches = [_decode_tasks(bytes(data)) for data in batch["tasks"]]
        tasks = [task for own in batches for task in own]
        expected = {task.image_id: len(task.calls) for task in tasks}
        with self._done:
            for task in tasks:
                self._results[task.image_id] = []
        for lane in self._lanes:
            lane.feed.put(self._for_lane(lane, task) for task in tasks)
        with self._done:
            self._done.wait_for(
                lambda: (
                    self._failure is not None
                    or all(len(self._results[key]) >= count for key, count in expected.items())
                )
            )
            if self._failure is not None:
                return _failure_output(self._failure)
            answers = {task.image_id: sorted(self._results.pop(task.image_id), key=_call_order) for task in tasks}
        out: dict[str, list[Any]] = {"batch": keys, "results": [], "report": [], "summary": [], "calls": []}
        for key, own in zip(keys, batches, strict=True):
            results = [result for task in own for result in answers[task.image_id]]
            kept, summary = results, ""
            if self._writer is not None:
                try:
                    kept, summary = self._writer(key, own, results)
                except OutputUnwritable as error:
                    return _failure_output(error)
            out["results"].append(_encode_results(kept))
            out["summary"].append(summary)
            out["calls"].append(len(results))
        out["report"] = [self._report(), *([""] * (len(keys) - 1))]
        return _output(out)

    def _for_lane(self, lane: _Lane, task: ImageTask) -> ImageTask:
        """The task as the lane's run sees it: only the lane's calls, its metrics numbered from 0."""
        if len(self._lanes) == 1:
            return task
        position = {metric: own for own, metric in enumerate(lane.metrics)}
        calls = tuple(Call(position[call.metric], call.obj) for call in task.calls if call.metric in position)
        return task.model_copy(update={"calls": calls})

    def _report(self) -> str:
        layers = next((lane.report.layers for lane in self._lanes if lane.report.layers), ())
        errors = {name: error for lane in self._lanes for name, error in lane.report.metric_errors.items()}
        return orjson.dumps(
            {
                "actor": self._name,
                "layers": _LAYERS.dump_python(layers, mode="json"),
                "metric_errors": errors,
                "worker_restarts": sum(lane.report.worker_restarts for lane in self._lanes),
            }
        ).decode()

    def __del__(self) -> None:
        # A graceful exit ends the runs and waits for them to kill their workers' process groups: a worker
        # spawned a moment before the actor exits may not have armed its death signal yet. A SIGKILL of the
        # actor leaves the workers to that signal.
        lanes = getattr(self, "_lanes", ())
        for lane in lanes:
            lane.feed.close()
        for lane in lanes:
            if lane.thread is not None and lane.thread is not threading.current_thread():
                lane.thread.join(timeout=10)


def _output(columns: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """An actor's output batch: one row per batch it was given."""
    return {
        "batch": np.asarray(columns["batch"], dtype=np.int64),
        "results": np.asarray(columns["results"], dtype=object),
        "report": np.asarray(columns["report"], dtype=object),
        "summary": np.asarray(columns["summary"], dtype=object),
        "calls": np.asarray(columns["calls"], dtype=np.int64),
        "failure": np.asarray([""] * len(columns["batch"]), dtype=object),
    }


def _failure_output(failure: BaseException) -> dict[str, np.ndarray]:
    """The machine's failure on this node, as one row of data; anything else is a bug, and Ray fails the job."""
    if type(failure).__name__ not in _MACHINE_FAILURES:
        raise failure
    encoded = orjson.dumps({"type": type(failure).__name__, "message": str(failure)}).decode()
    return {
        "batch": np.asarray([-1], dtype=np.int64),
        "results": np.asarray([""], dtype=object),
        "report": np.asarray([""], dtype=object),
        "summary": np.asarray([""], dtype=object),
        "calls": np.asarray([0], dtype=np.int64),
        "failure": np.asarray([encoded], dtype=object),
    }


def _call_order(result: CallResult) -> tuple[int, int]:
    return result.metric, -1 if result.obj is None else result.obj
