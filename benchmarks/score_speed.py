"""How fast `metricsmith score` is, next to the practical limit and next to one pass per metric.

    python benchmarks/score_speed.py [--images 2000] [--workers N] [--data DIR] [--repeat 1]

Three ways of scoring the same demo dataset with the same 8 built-in metrics and N processes,
measured in one run on the same machine:

  (a) in-process, one pass: a plain multiprocessing pool, each image decoded once with cv2 and
      every metric's score() called on it and on each of its objects. No sandbox, no protocol:
      the practical limit for this work in Python.
  (b) `metricsmith score`'s engine: `score_dataset` with every sandbox layer the machine offers.
  (c) one sandboxed `score_dataset` run per metric (8 runs, each decoding every image again), the
      way Encord Active runs its metrics; the total of the 8 wall times.
  (d) `metricsmith score --engine ray` on a local Ray instance of N CPUs (when Ray is installed):
      N actors, each with one sandboxed worker. Ray's own start (`ray.init`) is timed apart, and so
      is the pool's start (connected to the first batch back); the goal compares the rest with (b).
      With --repeat K, (d) runs K times in the one Ray instance, a new actor pool each time.

It checks that (a), (b) and (c) produce the same scores, measures the cold start of one sandboxed
worker, and prints a table with PASS/MISS per goal. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from agent.data.coco import Dataset
    from agent.metrics.contract import MetricSpec
    from sandbox.protocol import LayerStatus

REPO = Path(__file__).resolve().parent.parent
METRICS = (
    "brightness",
    "contrast",
    "sharpness",
    "object_area_relative",
    "border_closeness",
    "annotation_duplicates",
    "black_white_share",
    "box_tightness",
)
# Preferred metrics for the cold start: the cheapest first, the point is the worker, not the metric.
COLD_START_METRICS = ("object_count", "brightness")
GOAL_ENGINE_OVER_LIMIT = 1.15  # (b)/(a) at most
GOAL_PER_METRIC_OVER_ENGINE = 4.0  # (c)/(b) at least
GOAL_COLD_START_S = 0.3
GOAL_RAY_OVER_ENGINE = 1.3  # (d)/(b) at most, Ray's own start left out
RAY_OBJECT_STORE_BYTES = 256 * 1024 * 1024
TOLERANCE = 1e-9
# The sandbox workers run with these; the in-process pool gets the same, so neither side has more threads.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

Key = tuple[str, int, int | None]  # (metric, image_id, annotation_id)
Scores = dict[Key, float | None]


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def _inside_repo(path: Path) -> bool:
    resolved = path.resolve()
    return resolved == REPO or REPO in resolved.parents


def prepare_dataset(data: Path | None, n_images: int, seed: int) -> tuple[Path, bool]:
    """The annotations file to score, generated unless one is already there. Returns (path, reused)."""
    from agent.data.demo import generate_demo_dataset
    from agent.resources import cache_dir

    if data is not None and data.is_file():
        return data, True
    folder = data if data is not None else cache_dir() / f"bench-{n_images}-{seed}"
    annotations = folder / "annotations.json"
    if annotations.is_file():
        return annotations, True
    if _inside_repo(folder):
        sys.exit(f"refusing to write a {n_images}-image dataset inside the repository: {folder}")
    print(f"generating {n_images} demo images (640x480, seed {seed}) in {folder} ...", flush=True)
    started = time.perf_counter()
    path = generate_demo_dataset(folder, n_images=n_images, seed=seed)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return path, False


def metric_path(name: str) -> Path:
    from agent.resources import builtin_metrics_dir

    return builtin_metrics_dir() / f"{name}.py"


def wait_for_metrics(names: Iterable[str], wait_s: float) -> None:
    """The built-in metrics may still be being written; wait up to wait_s for their files."""
    deadline = time.monotonic() + wait_s
    while missing := [name for name in names if not metric_path(name).is_file()]:
        if time.monotonic() >= deadline:
            sys.exit(f"built-in metrics missing: {', '.join(missing)} (looked in {metric_path('x').parent})")
        print(f"waiting for built-in metrics: {', '.join(missing)}", flush=True)
        time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))


# ---------------------------------------------------------------------------------------------
# (a) in-process, one pass, no sandbox
# ---------------------------------------------------------------------------------------------

# Filled in each pool process by _init_in_process: (name, level, score function).
_LOADED: list[tuple[str, str, Callable[..., Any]]] = []


def _import_metric(name: str, path: str) -> Any:
    """Import a metric file as a module. Trusted here: these are the project's own built-ins."""
    spec = importlib.util.spec_from_file_location(f"bench_metric_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _init_in_process(metrics: list[tuple[str, str, str]]) -> None:
    cv2.setNumThreads(1)  # as in the sandbox worker: the parallelism is the processes
    _LOADED.clear()
    for name, level, path in metrics:
        _LOADED.append((name, level, _import_metric(name, path).score))


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _score_chunk(chunk: list[tuple[int, str, dict[str, Any]]]) -> tuple[list[tuple[Key, float | None]], float]:
    """Decode each image once, run every metric on it and on each of its objects.

    Returns the scores and the CPU seconds this process spent on them.
    """
    cpu_started = time.process_time()
    rows: list[tuple[Key, float | None]] = []
    for image_id, path, scene in chunk:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot decode {path}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        image.setflags(write=False)
        for name, level, score in _LOADED:
            if level == "image":
                rows.append(((name, image_id, None), _as_float(score(image, scene))))
            else:
                for obj in scene["annotations"]:
                    rows.append(((name, image_id, obj["id"]), _as_float(score(image, obj, scene))))
    return rows, time.process_time() - cpu_started


def _metric_files(specs: list[MetricSpec]) -> list[tuple[str, str, str]]:
    return [(spec.name, spec.level, str(metric_path(spec.name))) for spec in specs]


def _work(dataset: Dataset, limit: int | None = None) -> list[tuple[int, str, dict[str, Any]]]:
    images = dataset.images if limit is None else dataset.images[:limit]
    return [(image.id, os.path.realpath(dataset.image_path(image.id)), dataset.scene(image.id)) for image in images]


def speed_probe(dataset: Dataset, specs: list[MetricSpec], images: int = 40) -> float:
    """Milliseconds per image for the whole job on one core, in this process: how fast the machine is now.

    The machine's speed can drift during a run (other virtual machines on the same host); probing
    it before every round shows how much, so that a ratio is not read from two different machines.
    """
    if len(_LOADED) != len(specs):
        _init_in_process(_metric_files(specs))
    work = _work(dataset, images)
    samples = []
    for _ in range(3):
        started = time.perf_counter()
        _score_chunk(work)
        samples.append((time.perf_counter() - started) / len(work) * 1000)
    return statistics.median(samples)


@dataclass
class InProcessRun:
    seconds: float
    parent_cpu: float  # CPU seconds of this process: building the work list, collecting results
    workers_cpu: float  # CPU seconds the pool processes spent scoring
    scores: Scores


def run_in_process(dataset: Dataset, specs: list[MetricSpec], workers: int) -> InProcessRun:
    """(a): N spawned processes, images split into chunks. The clock includes starting the pool."""
    started, cpu_started = time.perf_counter(), time.process_time()
    work = _work(dataset)
    size = max(1, len(work) // (workers * 16))
    chunks = [work[i : i + size] for i in range(0, len(work), size)]
    metrics = _metric_files(specs)
    scores: Scores = {}
    workers_cpu = 0.0
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_in_process, initargs=(metrics,)) as pool:
        for rows, cpu in pool.imap_unordered(_score_chunk, chunks):
            scores.update(rows)
            workers_cpu += cpu
    return InProcessRun(time.perf_counter() - started, time.process_time() - cpu_started, workers_cpu, scores)


# ---------------------------------------------------------------------------------------------
# (b) and (c): the sandboxed engine
# ---------------------------------------------------------------------------------------------


@dataclass
class EngineRun:
    seconds: float
    host_cpu: float  # CPU seconds of this process (the engine's host side), workers not included
    scores: Scores
    failed: int
    expected: int
    layers: tuple[LayerStatus, ...] = ()
    errors: list[str] = field(default_factory=list)


def run_engine(dataset: Dataset, specs: list[MetricSpec], workers: int) -> EngineRun:
    """(b): `metricsmith score`'s code path, every layer the machine offers."""
    from agent.metrics.scoring import score_dataset
    from sandbox.isolation import SandboxConfig

    started, cpu_started = time.perf_counter(), time.process_time()
    outcome = score_dataset(dataset, specs, SandboxConfig(workers=workers))
    seconds, host_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    scores: Scores = {(row.metric, row.image_id, row.annotation_id): row.score for row in outcome.rows}
    errors = sorted({f"{row.metric}: {row.error_kind}: {(row.error or '')[:200]}" for row in outcome.rows if row.error})
    return EngineRun(seconds, host_cpu, scores, outcome.failed, outcome.expected_rows, outcome.layers, errors)


@dataclass
class RayRun:
    run: EngineRun
    ray_init_s: float  # starting the local Ray instance
    pool_start_s: float  # connected to the first batch back: actors and their sandboxed workers starting
    batches: int
    steady_s: float  # median over the runs of each run's wall time less its own pool start
    walls: list[float]  # each run's wall time; `run.seconds` is their median

    def run_batches_text(self) -> str:
        return f"{self.batches} batches"


def run_ray(dataset: Dataset, specs: list[MetricSpec], workers: int, repeat: int) -> RayRun:
    """(d): `score_dataset` through the Ray engine `repeat` times, on a local Ray instance started (and timed) here.

    Each run starts its own actor pool, as each `metricsmith score --engine ray` does.
    """
    import ray

    from agent.metrics.scoring import score_dataset
    from sandbox.distributed import RayEngine
    from sandbox.isolation import SandboxConfig

    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=workers,
        include_dashboard=False,
        object_store_memory=RAY_OBJECT_STORE_BYTES,
        logging_level="ERROR",
        log_to_driver=False,
    )
    ray_init_s = time.perf_counter() - started
    engines: list[RayEngine] = []

    def engine(config: SandboxConfig) -> RayEngine:
        engines.append(RayEngine(config))
        return engines[-1]

    walls: list[float] = []
    try:
        for _ in range(max(1, repeat)):
            started, cpu_started = time.perf_counter(), time.process_time()
            outcome = score_dataset(dataset, specs, SandboxConfig(workers=workers), engine=engine)
            walls.append(time.perf_counter() - started)
            host_cpu = time.process_time() - cpu_started
    finally:
        ray.shutdown()
    seconds = statistics.median(walls)
    pools = [each.timings.first_result_s for each in engines]
    scores: Scores = {(row.metric, row.image_id, row.annotation_id): row.score for row in outcome.rows}
    errors = sorted({f"{row.metric}: {row.error_kind}: {(row.error or '')[:200]}" for row in outcome.rows if row.error})
    run = EngineRun(seconds, host_cpu, scores, outcome.failed, outcome.expected_rows, outcome.layers, errors)
    steady = statistics.median(wall - pool for wall, pool in zip(walls, pools, strict=True))
    return RayRun(run, ray_init_s, statistics.median(pools), engines[0].timings.batches, steady, walls)


def run_per_metric(dataset: Dataset, specs: list[MetricSpec], workers: int) -> tuple[EngineRun, list[float]]:
    """(c): one sandboxed pass per metric; the wall times added up."""
    total = EngineRun(0.0, 0.0, {}, 0, 0)
    each: list[float] = []
    for spec in specs:
        run = run_engine(dataset, [spec], workers)
        each.append(run.seconds)
        total.seconds += run.seconds
        total.host_cpu += run.host_cpu
        total.scores.update(run.scores)
        total.failed += run.failed
        total.expected += run.expected
        total.errors += run.errors
        total.layers = run.layers
    return total, each


def cold_start(dataset: Dataset, spec: MetricSpec, repeats: int) -> list[float]:
    """Seconds from spawning one sandboxed worker to its first result: one image, one cheap metric."""
    from agent.metrics.scoring import build_tasks, data_roots
    from sandbox.engine import CallResult, ScoringEngine
    from sandbox.isolation import SandboxConfig
    from sandbox.protocol import MetricCode

    tasks = list(build_tasks(dataset, [spec]))[:1]
    config = SandboxConfig(workers=1, read_only_paths=data_roots(dataset, [task.path for task in tasks]))
    metric = MetricCode(name=spec.name, level=spec.level, source=spec.source, filename=spec.path)
    times: list[float] = []
    for _ in range(repeats):
        engine = ScoringEngine(config)  # probes the machine's layers (cached): not part of the start
        first: list[float] = []

        def sink(results: list[CallResult], first: list[float] = first) -> None:
            if not first:
                first.append(time.perf_counter())
            if any(result.kind for result in results):
                raise RuntimeError(f"cold-start call failed: {results[0].error}")

        started = time.perf_counter()
        engine.run([metric], tasks, sink)
        times.append(first[0] - started)
    return times


def import_floor(repeats: int) -> list[float]:
    """What any fresh worker pays at least: `python -I -c 'import numpy, cv2'`, no sandbox."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "import numpy, cv2"], check=True, env=SINGLE_THREAD_ENV)
        times.append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------------------------------------
# Checking and reporting
# ---------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    compared: int
    missing: int  # keys in one result set and not the other
    none_mismatch: int  # a score on one side, None on the other
    max_abs_diff: float

    @property
    def equal(self) -> bool:
        return self.missing == 0 and self.none_mismatch == 0 and self.max_abs_diff <= TOLERANCE


def compare(left: Scores, right: Scores) -> Comparison:
    keys = left.keys() & right.keys()
    missing = len(left.keys() ^ right.keys())
    none_mismatch = 0
    max_diff = 0.0
    for key in keys:
        a, b = left[key], right[key]
        if a is None or b is None:
            none_mismatch += (a is None) != (b is None)
            continue
        max_diff = max(max_diff, abs(a - b))
    return Comparison(len(keys), missing, none_mismatch, max_diff)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} (runs: {', '.join(f'{v:.2f}' for v in values)})"


def describe_comparison(result: Comparison) -> str:
    text = f"{result.compared} scores, max abs diff {result.max_abs_diff:.3g}"
    if result.missing or result.none_mismatch:
        text += f", {result.missing} missing, {result.none_mismatch} None on one side only"
    return text


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="score_speed.py")
    parser.add_argument("--images", type=int, default=2000, help="demo images to generate (default 2000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes N for (a), (b), (c)")
    parser.add_argument("--data", type=Path, help="an existing dataset folder (or annotations.json) to reuse")
    parser.add_argument("--seed", type=int, default=0, help="demo dataset seed (default 0)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of (a) and (b), alternating, then of (d); medians reported"
    )
    parser.add_argument("--cold-starts", type=int, default=5, help="cold-start samples (default 5)")
    parser.add_argument("--skip-per-metric", action="store_true", help="leave out (c), the slowest part")
    parser.add_argument("--skip-ray", action="store_true", help="leave out (d), the Ray engine")
    parser.add_argument("--wait-for-metrics", type=float, default=0.0, help="seconds to wait for missing built-ins")
    args = parser.parse_args(argv)
    if args.images < 1 or args.workers < 1 or args.repeat < 1 or args.cold_starts < 1:
        parser.error("--images, --workers, --repeat and --cold-starts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(SINGLE_THREAD_ENV)  # inherited by the (a) pool; the sandbox sets the same itself

    from agent.data.coco import load_coco
    from agent.metrics.contract import load_metric_file

    wait_for_metrics([*METRICS, COLD_START_METRICS[-1]], args.wait_for_metrics)
    specs = [load_metric_file(f"builtin:{name}") for name in METRICS]
    cheap = next(name for name in COLD_START_METRICS if metric_path(name).is_file())
    cheap_spec = load_metric_file(f"builtin:{cheap}")

    annotations, reused = prepare_dataset(args.data, args.images, args.seed)
    dataset = load_coco(annotations)
    n_images = len(dataset.images)
    n_workers = args.workers
    load_before = os.getloadavg()
    print(f"dataset: {annotations} ({n_images} images, {len(dataset.annotations)} objects, reused: {reused})")
    print(f"metrics: {', '.join(f'{spec.name} ({spec.level})' for spec in specs)}")
    print(f"N = {n_workers} processes; load average before: {load_before[0]:.2f}", flush=True)

    probes: list[float] = []
    times_a: list[float] = []
    times_b: list[float] = []
    cpu_a: list[float] = []
    cpu_b: list[float] = []
    cores_a: list[float] = []  # CPU seconds of the (a) pool per wall second while it scored
    paired: list[float] = []  # (b)/(a) within each round
    scores_a: Scores = {}
    run_b: EngineRun | None = None
    for round_index in range(args.repeat):
        probes.append(speed_probe(dataset, specs))
        order = ("a", "b") if round_index % 2 == 0 else ("b", "a")
        for which in order:
            if which == "a":
                run_a = run_in_process(dataset, specs, n_workers)
                scores_a = run_a.scores
                times_a.append(run_a.seconds)
                cpu_a.append(run_a.parent_cpu)
                cores_a.append(run_a.workers_cpu / run_a.seconds)
                print(f"  (a) in-process one pass:       {run_a.seconds:7.2f} s", flush=True)
            else:
                run_b = run_engine(dataset, specs, n_workers)
                times_b.append(run_b.seconds)
                cpu_b.append(run_b.host_cpu)
                print(f"  (b) sandboxed engine:          {run_b.seconds:7.2f} s", flush=True)
        paired.append(times_b[-1] / times_a[-1])
        print(f"  round {round_index + 1}: speed probe {probes[-1]:.2f} ms/image, (b)/(a) {paired[-1]:.2f}", flush=True)
    assert run_b is not None

    run_c: EngineRun | None = None
    each_c: list[float] = []
    if not args.skip_per_metric:
        probes.append(speed_probe(dataset, specs))
        run_c, each_c = run_per_metric(dataset, specs, n_workers)
        detail = ", ".join(f"{spec.name} {t:.2f}" for spec, t in zip(specs, each_c, strict=True))
        print(f"  (c) one sandboxed pass/metric: {run_c.seconds:7.2f} s ({detail})", flush=True)

    run_d: RayRun | None = None
    if not args.skip_ray and importlib.util.find_spec("ray") is not None:
        probes.append(speed_probe(dataset, specs))
        run_d = run_ray(dataset, specs, n_workers, args.repeat)
        print(
            f"  (d) Ray engine:                {run_d.run.seconds:7.2f} s "
            f"(runs: {', '.join(f'{wall:.2f}' for wall in run_d.walls)}; "
            f"+ ray.init {run_d.ray_init_s:.2f} s; pool start {run_d.pool_start_s:.2f} s)",
            flush=True,
        )

    cold = cold_start(dataset, cheap_spec, args.cold_starts)
    floor = import_floor(args.cold_starts)
    probes.append(speed_probe(dataset, specs))
    print(f"  cold start: {', '.join(f'{t:.3f}' for t in cold)} s", flush=True)

    a_vs_b = compare(scores_a, run_b.scores)
    c_vs_b = compare(run_c.scores, run_b.scores) if run_c is not None else None
    median_a, median_b = statistics.median(times_a), statistics.median(times_b)
    ratio_ba = median_b / median_a
    cold_median = statistics.median(cold)
    of_runs = f" (median of {args.repeat})" if args.repeat > 1 else ""

    rows: list[tuple[str, str, str, str]] = [
        ("(a) in-process, one pass, no sandbox", f"{spread(times_a)} s", f"{n_images / median_a:.0f} img/s", ""),
        ("(b) `metricsmith score` engine, sandboxed", f"{spread(times_b)} s", f"{n_images / median_b:.0f} img/s", ""),
    ]
    if run_c is not None:
        rows.append(
            (
                f"(c) one sandboxed pass per metric ({len(specs)} runs, summed)",
                f"{run_c.seconds:.2f} s",
                f"{n_images / run_c.seconds:.0f} img/s",
                "",
            )
        )
    rows.append(
        (
            f"(b)/(a){of_runs}",
            f"{ratio_ba:.2f}",
            f"goal <= {GOAL_ENGINE_OVER_LIMIT}",
            verdict(ratio_ba <= GOAL_ENGINE_OVER_LIMIT),
        )
    )
    if run_c is not None:
        ratio_cb = run_c.seconds / median_b
        rows.append(
            (
                "(c)/(b)",
                f"{ratio_cb:.2f}",
                f"goal >= {GOAL_PER_METRIC_OVER_ENGINE:g}",
                verdict(ratio_cb >= GOAL_PER_METRIC_OVER_ENGINE),
            )
        )
    if run_d is not None:
        rows.insert(
            3 if run_c is not None else 2,
            (
                f"(d) `--engine ray`, {n_workers} actors on a local Ray ({run_d.run_batches_text()})",
                f"{run_d.run.seconds:.2f} s",
                f"{n_images / run_d.run.seconds:.0f} img/s",
                "",
            ),
        )
        # The startup is reported apart: Ray's own, and the pool's (actor processes importing Ray Data, then
        # their sandboxed workers), measured to the first batch back, which includes that batch's own work.
        steady = run_d.steady_s / median_b
        rows.append(
            (
                "(d)/(b), Ray's start and the pool's start left out",
                f"{steady:.2f}",
                f"goal <= {GOAL_RAY_OVER_ENGINE}",
                verdict(steady <= GOAL_RAY_OVER_ENGINE),
            )
        )
        rows.append(("  (d)/(b), the pool's start counted", f"{run_d.run.seconds / median_b:.2f}", "", ""))
        rows.append(("  (d) startup: `ray.init` of a local instance", f"{run_d.ray_init_s:.2f} s", "apart", ""))
        rows.append(
            ("  (d) startup: actors and workers, to the first batch back", f"{run_d.pool_start_s:.2f} s", "in (d)", "")
        )
        rows.append(
            (
                "  (d)/(b) with `ray.init` counted",
                f"{(run_d.run.seconds + run_d.ray_init_s) / median_b:.2f}",
                "",
                "",
            )
        )
    rows.append(
        (
            f"cold start: 1 worker, spawn to first result (median of {len(cold)})",
            f"{cold_median:.3f} s",
            f"goal <= {GOAL_COLD_START_S} s",
            verdict(cold_median <= GOAL_COLD_START_S),
        )
    )
    rows.append(
        ("  for scale: `python -I -c 'import numpy, cv2'`", f"{statistics.median(floor):.3f} s", "no sandbox", "")
    )
    rows.append(("scores (a) = (b)", describe_comparison(a_vs_b), f"tolerance {TOLERANCE:g}", verdict(a_vs_b.equal)))
    if c_vs_b is not None:
        rows.append(
            ("scores (c) = (b)", describe_comparison(c_vs_b), f"tolerance {TOLERANCE:g}", verdict(c_vs_b.equal))
        )
    if run_d is not None:
        d_vs_b = compare(run_d.run.scores, run_b.scores)
        rows.append(
            ("scores (d) = (b)", describe_comparison(d_vs_b), f"tolerance {TOLERANCE:g}", verdict(d_vs_b.equal))
        )
    failures = run_b.failed + (run_c.failed if run_c is not None else 0) + (run_d.run.failed if run_d else 0)
    scored_by = "(b)" + (", (c)" if run_c is not None else "") + (", (d)" if run_d is not None else "")
    rows.append((f"failed calls in {scored_by}", str(failures), "goal 0", verdict(failures == 0)))

    print()
    print("| measure | value | rate / goal | verdict |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    active = [layer.name for layer in run_b.layers if layer.active]
    inactive = [layer.name for layer in run_b.layers if not layer.active]
    per_image = statistics.median(probes)
    small = " (fewer than 2000: not comparable with the figures in benchmarks/README.md)" if n_images < 2000 else ""
    print(f"- images: {n_images}{small} in {dataset.image_root}, {len(dataset.annotations)} objects")
    print(
        f"- calls per pass: {run_b.expected} ({len(specs)} metrics: image level once per image, object level per box)"
    )
    print(f"- N = {n_workers} processes for (a), (b) and (c); os.cpu_count() = {os.cpu_count()}")
    print(f"- CPU: {cpu_model()}")
    print(
        f"- Python {platform.python_version()}, numpy {np.__version__}, cv2 {cv2.__version__}, "
        f"kernel {platform.release()}"
    )
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    print(f"- OPENBLAS_CORETYPE: {'set to ' + coretype if coretype else 'not set'}")
    print(f"- sandbox layers active in (b): {', '.join(active) or 'none'}; inactive: {', '.join(inactive) or 'none'}")
    print(
        f"- the work itself, one core (decode + 8 metrics): {per_image:.2f} ms/image "
        f"(probe range {min(probes):.2f}-{max(probes):.2f}); ideal wall time with N processes: "
        f"{n_images * per_image / 1000 / n_workers:.2f} s"
    )
    print(
        f"- parallelism actually delivered to (a): {statistics.median(cores_a):.2f} CPU-seconds per second "
        f"with N = {n_workers} (CPU time of the pool's scoring / wall time of (a))"
    )
    print(
        f"- host-process CPU: (a) parent {statistics.median(cpu_a):.2f} s, "
        f"(b) engine host {statistics.median(cpu_b):.2f} s"
        + (f", (c) hosts {run_c.host_cpu:.2f} s" if run_c is not None else "")
        + (f", (d) Ray driver {run_d.run.host_cpu:.2f} s" if run_d is not None else "")
    )
    if args.repeat > 1:
        print(f"- (b)/(a) per round: {', '.join(f'{r:.2f}' for r in paired)}; median {statistics.median(paired):.2f}")
    load_after = os.getloadavg()
    print(f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    errors = run_b.errors + (run_c.errors if run_c is not None else []) + (run_d.run.errors if run_d else [])
    for error in errors[:10]:
        print(f"- error: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
