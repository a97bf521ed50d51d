"""How long `metricsmith selftest` takes, beside one `metricsmith score` of the same metrics.

    python benchmarks/selftest_speed.py [--images 1000] [--seeds 3] [--workers N] [--repeat 3]
                                        [--metrics all|hand-written]

Three things, timed in turn in each round (the order alternates between rounds), on the same demo
dataset (1,000 images by default, built once into the user's cache) with every built-in metric:

  (a) one score: `load_coco` and `score_dataset` in the sandbox, the rows written to a .jsonl file:
      what `metricsmith score` does.
  (b) selftest: `run_selftest` with K seeds: inject K times, score the K copies in one engine run
      with each distinct call made once (`agent.metrics.scoring.score_versions`), evaluate each.
  (c) selftest without reuse: the same K injections, each copy scored on its own and evaluated: how
      selftest worked before it shared calls between seeds.

It prints each time, the medians, (b)/(a) against the goal of at most 1.5, (c)/(b), and how many
score() calls (b) made against the calls of (c). (b) and (c) must give the same figures: it checks.
A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from score_speed import prepare_dataset

GOAL_SELFTEST_OVER_SCORE = 1.5


def one_score(annotations: Path, specs: list, workers: int) -> float:
    from agent.data.coco import load_coco
    from agent.metrics.results import write_rows
    from agent.metrics.scoring import score_dataset
    from sandbox.isolation import SandboxConfig

    started = time.perf_counter()
    dataset = load_coco(annotations)
    outcome = score_dataset(dataset, specs, SandboxConfig(workers=workers))
    with tempfile.TemporaryDirectory() as folder:
        write_rows(Path(folder) / "scores.jsonl", outcome.rows)
    return time.perf_counter() - started


def selftest(annotations: Path, specs: list, workers: int, seeds: int) -> tuple[float, object]:
    from agent.data.coco import load_coco, read_coco_json
    from agent.evaluation.selftest import run_selftest
    from sandbox.isolation import SandboxConfig

    started = time.perf_counter()
    document = read_coco_json(annotations)
    dataset = load_coco(annotations)
    report = run_selftest(
        document, annotations, dataset.image_root, specs, seeds=list(range(seeds)), rate=0.2,
        sandbox=SandboxConfig(workers=workers),
    )  # fmt: skip
    return time.perf_counter() - started, report


def selftest_without_reuse(annotations: Path, specs: list, workers: int, seeds: int) -> tuple[float, object]:
    """run_selftest with each copy scored alone: `score_versions` replaced by one `score_dataset` per copy."""
    from agent.evaluation import selftest as module
    from agent.metrics.scoring import VersionsOutcome, score_dataset
    from sandbox.engine import ScoringEngine

    def each_alone(versions, specs, config, on_calls=lambda count: None, engine=ScoringEngine):  # type: ignore[no-untyped-def]
        outcomes = [score_dataset(version, specs, config, engine=engine) for version in versions]
        calls = sum(outcome.expected_rows for outcome in outcomes)
        return VersionsOutcome(outcomes=outcomes, calls_run=calls, calls_needed=calls)

    shared = module.score_versions
    module.score_versions = each_alone
    try:
        return selftest(annotations, specs, workers, seeds)
    finally:
        module.score_versions = shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, help="an annotations file or folder to use instead of the demo")
    parser.add_argument(
        "--metrics", choices=("all", "hand-written"), default="all",
        help="every built-in (selftest's default), or only those that are not learned detectors",
    )  # fmt: skip
    args = parser.parse_args()

    from agent.metrics.contract import list_builtin_metrics

    annotations, _ = prepare_dataset(args.data, args.images, 0)
    specs = list_builtin_metrics()
    if args.metrics == "hand-written":
        specs = [spec for spec in specs if spec.combine != "learned"]
    print(f"dataset: {annotations}; {len(specs)} built-in metrics; {args.workers} workers; {args.seeds} seeds")
    times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    reports: dict[str, object] = {}
    for round_index in range(args.repeat):
        order = "abc" if round_index % 2 == 0 else "cba"
        for which in order:
            if which == "a":
                seconds = one_score(annotations, specs, args.workers)
            elif which == "b":
                seconds, reports["b"] = selftest(annotations, specs, args.workers, args.seeds)
            else:
                seconds, reports["c"] = selftest_without_reuse(annotations, specs, args.workers, args.seeds)
            times[which].append(seconds)
            print(f"  round {round_index + 1} ({which}): {seconds:6.2f} s", flush=True)

    median = {which: statistics.median(values) for which, values in times.items()}
    shared, alone = reports["b"], reports["c"]
    same = json.loads(shared.model_dump_json())["metrics"] == json.loads(alone.model_dump_json())["metrics"]  # type: ignore[attr-defined]
    ratio = median["b"] / median["a"]
    print()
    print("| run | median s | runs |")
    print("|---|---:|---|")
    labels = {"a": "(a) one score", "b": f"(b) selftest, {args.seeds} seeds", "c": "(c) selftest, no reuse"}
    for which, label in labels.items():
        print(f"| {label} | {median[which]:.2f} | {', '.join(f'{t:.2f}' for t in times[which])} |")
    print()
    verdict = "PASS" if ratio <= GOAL_SELFTEST_OVER_SCORE else "MISS"
    print(f"(b)/(a) = {ratio:.2f} (goal <= {GOAL_SELFTEST_OVER_SCORE}): {verdict}")
    print(f"(c)/(b) = {median['c'] / median['b']:.2f}")
    calls = shared.calls  # type: ignore[attr-defined]
    share = calls.run / calls.without_reuse
    print(f"score() calls: (b) made {calls.run} of the {calls.without_reuse} that (c) makes ({share:.0%})")
    print(f"(b) and (c) give the same figures: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
