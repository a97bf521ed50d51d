"""The scoring engine: a pool of sandbox workers fed chunks of images, with host-side deadlines.

One thread, one selector over every worker's pipe. Each worker holds at most one chunk. Results
come back in call order, so the host always knows which call is running: when a worker overruns
its deadline, crashes or sends junk, that call, and only that call, is recorded as failed, the
worker's process group is killed, a fresh worker starts, and the rest of the chunk is queued again.
Metric code failing is a result, never an exception here; only the machine failing is.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import os
import selectors
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

from sandbox.host import WorkerProcess
from sandbox.isolation import KERNEL_LAYERS, IsolationUnavailable, SandboxConfig, planned_layers
from sandbox.protocol import (
    Call,
    ErrorKind,
    ImageTask,
    InitFrame,
    LayerStatus,
    LoadingFrame,
    MetricCode,
    ProtocolViolation,
    ReadyFrame,
    ResultsFrame,
    encode_chunk,
)

_PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class CallResult:
    """The outcome of one score() call."""

    metric: int
    image_id: int
    obj: int | None
    score: float | None
    kind: ErrorKind | None = None
    error: str | None = None
    # What a feature metric returned, instead of a score: 8-byte floats in an array.array as the engine makes
    # them, a quarter of the memory of Python floats (a run holds one per box until its end).
    features: Sequence[float] | None = None


def compact_features(features: Sequence[float] | None) -> array[float] | None:
    """A feature vector as `CallResult` holds it (8-byte floats), wherever the results were decoded."""
    return None if features is None else array("d", features)


class TaskFeed:
    """Tasks handed to a running engine by other threads, for a run that outlives one batch.

    A Ray actor keeps one run (and its sandboxed worker) alive across the batches Ray sends it: each
    batch is `put` here, and the run takes it without blocking, so the run's loop keeps reading
    results and enforcing deadlines while it waits for the next batch. A byte written to a pipe wakes
    the loop's selector when tasks arrive. The run ends once the feed is closed and drained.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: deque[ImageTask] = deque()
        self._closed = False
        self.wake_fd, self._wake_write_fd = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_write_fd, False)

    def put(self, tasks: Iterable[ImageTask]) -> None:
        with self._lock:
            self._tasks.extend(tasks)
        self._wake()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake()

    def take(self) -> ImageTask | bool | None:
        """The next task; None when there is none yet; False once closed and drained."""
        with self._lock:
            if self._tasks:
                return self._tasks.popleft()
            return False if self._closed else None

    def drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_fd, 4096):
                pass

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write_fd, b"\0")


class WorkerStartFailed(Exception):
    """A worker could not start at all: the machine's problem, not the metric's."""


class ClusterUnreachable(Exception):
    """The cluster an engine was pointed at (Ray's --address) could not be reached: the environment's problem.

    Here rather than beside the Ray engine, so that the CLI can catch it without importing Ray.
    """


@dataclass
class RunReport:
    layers: tuple[LayerStatus, ...] = ()
    metric_errors: dict[str, str] = field(default_factory=dict)
    calls_done: int = 0
    worker_restarts: int = 0
    interrupted: bool = False


@dataclass
class _Chunk:
    id: int
    tasks: list[tuple[ImageTask, bool]]  # (task, isolated), as they came off the queue
    calls: list[tuple[ImageTask, Call]]


@dataclass
class _Slot:
    """A worker and the chunks sent to it: the first is running, the next waits in its pipe."""

    worker: WorkerProcess
    chunks: deque[_Chunk] = field(default_factory=deque)
    reported: int = 0  # results received for chunks[0]
    deadline: float = float("inf")
    loading: int | None = None  # the metric whose module-level code the starting worker is running
    writing: bool = False  # registered with the selector for EVENT_WRITE


# A second chunk queued behind the running one hides the round trip between chunks.
_CHUNKS_IN_FLIGHT = 2
# Tasks built ahead of the workers, in chunks per worker: enough that none waits for the next chunk.
_LOOKAHEAD_CHUNKS = 4


def _hard_deadline_s(timeout_s: float) -> float:
    # A soft timeout per call, plus room for decoding the image and flushing results.
    return timeout_s * 1.5 + 2.0


class Engine(Protocol):
    """What scoring needs of an engine: this machine's (`ScoringEngine`) or a cluster's (`sandbox.distributed`)."""

    # Runs the feature metrics' neighbour search where the engine's workers are (`agent.metrics.neighbours.RowMapper`);
    # None: in the scoring process.
    map_rows: Callable[..., Any] | None
    # True for an engine whose `run` also takes a `BatchWriter` (a `WritingEngine`).
    writes_batches: bool

    def run(
        self,
        metrics: list[MetricCode],
        tasks: Iterable[ImageTask],
        sink: Callable[[list[CallResult]], None],
        report: RunReport | None = None,
    ) -> RunReport: ...


class BatchWriter(Protocol):
    """Writes a batch's results where they were scored, so that they never travel to the driver.

    Called by an engine that scores elsewhere (a Ray actor) with a batch's key, its tasks and all its
    results. It returns the results the driver must still see and a summary of the rest, as text,
    which the engine hands to the driver's `on_written` as it is. The same key means the same tasks
    and results: a batch run twice (Ray retries at least once) must write over its own output.
    """

    def __call__(
        self, batch: int, tasks: Sequence[ImageTask], results: list[CallResult]
    ) -> tuple[list[CallResult], str]: ...


class WritingEngine(Engine, Protocol):
    """An engine that runs a `BatchWriter` where each batch is scored (`writes_batches` is True)."""

    def run(
        self,
        metrics: list[MetricCode],
        tasks: Iterable[ImageTask],
        sink: Callable[[list[CallResult]], None],
        report: RunReport | None = None,
        writer: BatchWriter | None = None,
        on_written: Callable[[str], None] = lambda summary: None,
    ) -> RunReport: ...


class OutputUnwritable(Exception):
    """Where a batch's rows go can't be written on a node (a directory not shared with it, a full disk).

    The environment's problem, raised on the node and again at the driver, with the node named.
    """


class ScoringEngine:
    """Runs metrics over image tasks in sandboxed workers."""

    map_rows = None  # the neighbour search runs in the scoring process, beside this engine
    writes_batches = False  # results all come back here; a writer runs beside the engine (`agent.metrics.scoring`)

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.layers = planned_layers(config)

    def run(
        self,
        metrics: list[MetricCode],
        tasks: Iterable[ImageTask] | TaskFeed,
        sink: Callable[[list[CallResult]], None],
        report: RunReport | None = None,
    ) -> RunReport:
        """Score every call of every task; hand results to `sink` as they arrive.

        `tasks` may be a `TaskFeed`, filled while the run goes on, when every metric shares the workers.
        `report`, when given, is the one filled in as the run goes (layers once a worker is ready), for a
        caller that reads it before the run ends.
        """
        if isinstance(tasks, TaskFeed):
            if not (self.config.share_workers or len(metrics) == 1):
                raise ValueError("a TaskFeed run needs workers shared by every metric; feed one run per metric")
            return self._run_once(metrics, tasks, sink, report)
        if self.config.share_workers or len(metrics) == 1:
            if isinstance(tasks, Sized):
                return self._run_once(metrics, list(tasks), sink, report)
            # Not built ahead: the workers start while the tasks after the first are made (`_Run._refill`).
            pending = iter(tasks)
            first = next(pending, None)
            if first is None:
                return report or RunReport()
            return self._run_once(metrics, itertools.chain([first], pending), sink, report)
        return self._run_each_metric_alone(metrics, list(tasks), sink, report)

    def _run_once(
        self,
        metrics: list[MetricCode],
        tasks: Iterable[ImageTask] | TaskFeed,
        sink: Callable[[list[CallResult]], None],
        report: RunReport | None = None,
    ) -> RunReport:
        run = _Run(self.config, self.layers, metrics, tasks, sink)
        if report is not None:
            run.report = report
        previous = _set_dumpable(False)
        try:
            return run.execute()
        finally:
            run.shutdown()
            _set_dumpable(previous)

    def _run_each_metric_alone(
        self,
        metrics: list[MetricCode],
        tasks: list[ImageTask],
        sink: Callable[[list[CallResult]], None],
        report: RunReport | None = None,
    ) -> RunReport:
        """One pass per metric, each in workers of its own: no metric can tamper with another's scores."""
        combined = report if report is not None else RunReport()
        for index, metric in enumerate(metrics):
            own_tasks = [
                task.model_copy(
                    update={"calls": tuple(Call(metric=0, obj=c.obj) for c in task.calls if c.metric == index)}
                )
                for task in tasks
            ]

            def renumbered(results: list[CallResult], index: int = index) -> None:
                sink([dataclasses.replace(result, metric=index) for result in results])

            alone = self._run_once([metric], own_tasks, renumbered)
            combined.layers = combined.layers or alone.layers
            combined.metric_errors.update(alone.metric_errors)
            combined.calls_done += alone.calls_done
            combined.worker_restarts += alone.worker_restarts
        return combined


def _set_dumpable(value: bool) -> bool:
    """While workers run, make the host non-dumpable: its /proc/PID/environ (API keys) can't be read."""
    libc = ctypes.CDLL(None, use_errno=True)
    previous = bool(libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
    libc.prctl(_PR_SET_DUMPABLE, int(value), 0, 0, 0)
    return previous


class _Run:
    def __init__(
        self,
        config: SandboxConfig,
        layers: dict[str, bool],
        metrics: list[MetricCode],
        tasks: Iterable[ImageTask] | TaskFeed,
        sink: Callable[[list[CallResult]], None],
    ) -> None:
        self.config = config
        self.layers = layers
        self.init = InitFrame(metrics=tuple(metrics), timeout_s=config.timeout_s)
        self.tasks = tasks
        self.source: Iterator[ImageTask] | TaskFeed | None = None  # tasks not yet taken into `pending`
        self.pending: deque[tuple[ImageTask, bool]] = deque()
        self.sink = sink
        self.selector = selectors.DefaultSelector()
        self.slots: list[_Slot] = []
        self.report = RunReport()
        self.next_chunk = 0

    # -- workers -------------------------------------------------------------------------------

    def _spawn(self) -> _Slot:
        worker = WorkerProcess(
            self.init, self.layers, self.config.memory_mb, self.config.scratch_mb, self.config.read_only_paths
        )
        slot = _Slot(worker=worker, deadline=time.monotonic() + self.config.startup_timeout_s)
        self.selector.register(worker.stdout_fd, selectors.EVENT_READ, slot)
        return slot

    def _retire(self, slot: _Slot) -> None:
        for fd in (slot.worker.stdout_fd, slot.worker.stdin_fd):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        slot.worker.kill()

    def _replace(self, slot: _Slot) -> None:
        self._retire(slot)
        self.report.worker_restarts += 1
        index = self.slots.index(slot)
        self.slots[index] = self._spawn() if self._work_left() else slot

    def shutdown(self) -> None:
        for slot in self.slots:
            self._retire(slot)
        self.selector.close()

    def _work_left(self) -> bool:
        return bool(self.pending) or self.source is not None or any(slot.chunks for slot in self.slots)

    def _refill(self) -> None:
        """Take tasks from the source until a few chunks per worker wait in `pending`.

        Tasks are built while the workers score the ones before them, rather than all before the
        first is sent: building them (scenes, and `score_versions`' reuse keys) costs the host time.
        """
        wanted = _LOOKAHEAD_CHUNKS * self.config.chunk_images * max(len(self.slots), 1)
        while self.source is not None and len(self.pending) < wanted:
            if isinstance(self.source, TaskFeed):
                fed = self.source.take()
                if fed is None:
                    return  # nothing yet: the feed's pipe wakes the selector when there is
                task = fed or None
            else:
                task = next(self.source, None)
            if task is None:
                self.source = None
            elif task.calls:
                self.pending.append((task, False))

    # -- the loop ------------------------------------------------------------------------------

    def execute(self) -> RunReport:
        # Workers start first: they import numpy and cv2 while the tasks are being built here.
        count = self.config.workers
        if isinstance(self.tasks, Sized):
            count = min(count, len(self.tasks))  # an iterator's tasks are not counted ahead: one worker per CPU
        if count == 0:
            return self.report
        self.slots = [self._spawn() for _ in range(count)]
        if isinstance(self.tasks, TaskFeed):
            self.selector.register(self.tasks.wake_fd, selectors.EVENT_READ, self.tasks)
            self.source = self.tasks
        else:
            self.source = iter(self.tasks)
        self._refill()
        try:
            while self._work_left():
                self._step()
        except KeyboardInterrupt:
            self.report.interrupted = True
            raise
        return self.report

    def _step(self) -> None:
        now = time.monotonic()
        timeout = max(0.0, min((slot.deadline for slot in self.slots), default=now + 1.0) - now)
        self._watch_writes()
        for key, _ in self.selector.select(timeout=min(timeout, 1.0)):
            slot = key.data
            if isinstance(slot, TaskFeed):
                slot.drain_wakeups()
                continue
            if slot not in self.slots:
                continue
            if key.fd == slot.worker.stdin_fd:
                if not slot.worker.flush():
                    self._on_pipe_closed(slot)
            else:
                self._on_readable(slot)
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.deadline < now:
                if slot.loading is not None:
                    self._startup_failed(slot, f"ran past the {self.config.timeout_s:g} s limit")
                elif slot.worker.ready is None:
                    self._startup_failed(slot, f"did not start within {self.config.startup_timeout_s:g} s")
                else:
                    self._fail_current(slot, "hard_timeout", self._hard_timeout_message())
        for slot in list(self.slots):
            self._refill()
            while slot.worker.ready is not None and len(slot.chunks) < _CHUNKS_IN_FLIGHT and self.pending:
                if not self._assign(slot):
                    break

    def _watch_writes(self) -> None:
        """Listen for a worker's stdin becoming writable only while its outbox holds something."""
        for slot in self.slots:
            if slot.worker.wants_write and not slot.writing:
                self.selector.register(slot.worker.stdin_fd, selectors.EVENT_WRITE, slot)
                slot.writing = True
            elif slot.writing and not slot.worker.wants_write:
                self.selector.unregister(slot.worker.stdin_fd)
                slot.writing = False

    def _hard_timeout_message(self) -> str:
        return (
            f"score() ran past the {self.config.timeout_s:g} s limit and ignored the soft timeout; "
            "the worker was killed"
        )

    def _on_readable(self, slot: _Slot) -> None:
        if slot not in self.slots:
            return
        frames, still_open, violation = slot.worker.read_frames()
        try:
            for frame in frames:
                self._on_frame(slot, frame)
            if violation is not None:
                raise violation
        except ProtocolViolation as violation:
            if slot.worker.ready is None:
                self._startup_failed(slot, str(violation))
            else:
                self._fail_current(slot, "protocol", f"the worker broke the protocol: {violation}")
            return
        if not still_open:
            self._on_pipe_closed(slot)

    def _on_pipe_closed(self, slot: _Slot) -> None:
        with contextlib.suppress(Exception):
            slot.worker.process.wait(timeout=2)
        if slot.worker.ready is None:
            self._startup_failed(slot, slot.worker.exit_description())
        else:
            self._fail_current(slot, "crash", f"the worker {slot.worker.exit_description()}")

    def _on_frame(self, slot: _Slot, frame: LoadingFrame | ReadyFrame | ResultsFrame) -> None:
        if isinstance(frame, LoadingFrame):
            if slot.worker.ready is not None or not 0 <= frame.metric < len(self.init.metrics):
                raise ProtocolViolation("an unexpected loading frame")
            slot.loading = frame.metric
            slot.deadline = time.monotonic() + _hard_deadline_s(self.config.timeout_s)
            return
        if isinstance(frame, ReadyFrame):
            if slot.worker.ready is not None:
                raise ProtocolViolation("a second ready frame")
            self._check_layers(slot, frame)
            slot.worker.ready = frame
            slot.loading = None
            slot.deadline = float("inf")
            if not self.report.layers:
                self.report.layers = self._with_host_layers(frame.layers)
            self.report.metric_errors.update(frame.metric_errors)
            return
        if slot.worker.ready is None or not slot.chunks or frame.chunk != slot.chunks[0].id:
            raise ProtocolViolation("results for a chunk the worker is not running")
        chunk = slot.chunks[0]
        remaining = len(chunk.calls) - slot.reported
        if len(frame.rows) > remaining or (frame.done and len(frame.rows) != remaining):
            raise ProtocolViolation(f"{len(frame.rows)} results where {remaining} calls were outstanding")
        results = []
        for row in frame.rows:
            task, call = chunk.calls[slot.reported]
            slot.reported += 1
            results.append(
                CallResult(
                    call.metric,
                    task.image_id,
                    call.obj,
                    row["score"],
                    row.get("kind"),
                    row.get("error"),
                    compact_features(row.get("features")),
                )
            )
        self._emit(results)
        slot.deadline = time.monotonic() + _hard_deadline_s(self.config.timeout_s)
        if frame.done:
            slot.chunks.popleft()
            slot.reported = 0
            slot.worker.images_done += len(chunk.tasks)
            if not slot.chunks:
                slot.deadline = float("inf")
                if slot.worker.images_done >= self.config.recycle_after_images and (self.pending or self.source):
                    self._replace(slot)

    def _check_layers(self, slot: _Slot, ready: ReadyFrame) -> None:
        missing = [
            f"{layer.name} ({layer.detail})"
            for layer in ready.layers
            if not layer.active and self.layers.get(layer.name, False)
        ]
        if missing and self.config.require_isolation:
            raise IsolationUnavailable("isolation required but the worker could not apply: " + "; ".join(missing))

    def _with_host_layers(self, worker_layers: tuple[LayerStatus, ...]) -> tuple[LayerStatus, ...]:
        bwrap_layer = LayerStatus(
            name="bwrap",
            active=self.layers.get("bwrap", False),
            detail="separate user, pid, net, ipc and mount namespaces" if self.layers.get("bwrap") else "not used",
        )
        reported = {layer.name for layer in worker_layers}
        missing = [
            LayerStatus(name=name, active=False, detail="not used")
            for name in KERNEL_LAYERS
            if name not in reported and name != "bwrap"
        ]
        return (*worker_layers, *missing, bwrap_layer)

    def _startup_failed(self, slot: _Slot, reason: str) -> None:
        """Before ready: blame the metric whose module code was running, or else the machine."""
        if slot.loading is not None:
            metric = self.init.metrics[slot.loading]
            message = f"module-level code {reason}; the metric is disabled for this run"
            self.report.metric_errors[metric.name] = message
            disabled = metric.model_copy(update={"disabled": message})
            metrics = tuple(disabled if m is metric else m for m in self.init.metrics)
            self.init = self.init.model_copy(update={"metrics": metrics})
            self._replace(slot)
            return
        log = slot.worker.log_tail()
        self._retire(slot)
        raise WorkerStartFailed(f"a sandbox worker failed to start: {reason}" + (f"\n{log}" if log else ""))

    # -- work ----------------------------------------------------------------------------------

    def _assign(self, slot: _Slot) -> bool:
        """Send the worker its next chunk; False when the worker turned out to be gone."""
        # Near the end, smaller chunks, so that no worker is left with a long one while the others idle.
        share = (
            self.config.chunk_images if self.source is not None else max(1, len(self.pending) // (2 * len(self.slots)))
        )
        size = min(self.config.chunk_images, share)
        taken: list[tuple[ImageTask, bool]] = []
        while self.pending and len(taken) < size:
            _, isolated = self.pending[0]
            if isolated and taken:
                break  # a suspect call always runs alone
            taken.append(self.pending.popleft())
            if isolated:
                break
        self.next_chunk += 1
        chunk = _Chunk(
            id=self.next_chunk, tasks=taken, calls=[(task, call) for task, _ in taken for call in task.calls]
        )
        if not slot.chunks:
            slot.reported = 0
            slot.deadline = time.monotonic() + _hard_deadline_s(self.config.timeout_s)
        slot.chunks.append(chunk)
        if not slot.worker.send(encode_chunk(chunk.id, [task for task, _ in taken])):
            self._fail_current(slot, "crash", f"the worker {slot.worker.exit_description()}")
            return False
        return True

    def _fail_current(self, slot: _Slot, kind: ErrorKind, message: str) -> None:
        """The worker died, hung or lied while running a chunk: find the call to blame.

        Results come back a few at a time, so with several calls unreported it is not known which
        one was running. Those calls are then queued again one per chunk, and the next failure
        among them has a single suspect, which is recorded as failed. Chunks still waiting in the
        worker's pipe never started, so they go back to the queue as they were. The worker is replaced.
        """
        requeue: list[tuple[ImageTask, bool]] = []
        if slot.chunks:
            unreported = slot.chunks[0].calls[slot.reported :]
            if len(unreported) == 1:
                task, call = unreported[0]
                self._emit([CallResult(call.metric, task.image_id, call.obj, None, kind, message)])
            else:
                requeue = [(task.model_copy(update={"calls": (call,)}), True) for task, call in unreported]
            for waiting in list(slot.chunks)[1:]:
                requeue.extend(waiting.tasks)
        self.pending.extendleft(reversed(requeue))
        slot.chunks.clear()
        slot.reported = 0
        self._replace(slot)

    def _emit(self, results: list[CallResult]) -> None:
        self.report.calls_done += len(results)
        self.sink(results)
