"""Where the learned detectors' time goes: making the training copies, the sandboxed calls, the classifier fits.

    python benchmarks/learned_cost.py [--images 1000] [--workers N] [--repeat 3]

Scores the demo dataset (`demo-data --images N --seed 0`, built once into metricsmith's cache) with
`builtin:learned` alone, in the sandbox, the way `metricsmith score` does, and times three phases
inside that one run: `training_copies` (the corrupted copies the classifiers learn from, made on
the host when the engine wants the first training task, so inside the engine run's time), the engine
run (every real box's and every training box's score() call, and the copies), and
`cross_fitted_scores_each` (the 30 fits, 6 types x 5 folds, side by side on `--workers` threads).
Prints each phase's median over the rounds and the total. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from score_speed import prepare_dataset


def _timed(phases: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from agent.data.coco import load_coco
    from agent.metrics import scoring
    from agent.metrics.contract import load_metric_files
    from sandbox.isolation import SandboxConfig

    annotations, _ = prepare_dataset(None, args.images, 0)
    dataset = load_coco(annotations)
    specs = load_metric_files("builtin:learned")
    # scoring.py calls these by the names it imported: wrapping them there times them inside a real run.
    phase_names = ("training_copies", "_run_engine", "cross_fitted_scores_each")
    originals = {name: getattr(scoring, name) for name in phase_names}
    rounds: list[dict[str, float]] = []
    try:
        for _ in range(args.repeat):
            phases: dict[str, float] = {}
            for name, function in originals.items():
                setattr(scoring, name, _timed(phases, name, function))
            started = time.perf_counter()
            outcome = scoring.score_dataset(dataset, specs, SandboxConfig(workers=args.workers))
            phases["total"] = time.perf_counter() - started
            assert outcome.failed == 0, "every call should score"
            rounds.append(phases)
    finally:
        for name, function in originals.items():
            setattr(scoring, name, function)
    print(f"{args.images} demo images, {len(dataset.annotations)} boxes, {args.workers} workers, {args.repeat} rounds")
    labels = {
        "training_copies": "training copies (host)",
        "_run_engine": "engine run: score() calls, real and training boxes (sandbox), the copies made in it",
        "cross_fitted_scores_each": "classifier fits (host)",
        "total": "total",
    }
    for name, label in labels.items():
        values = [phases.get(name, 0.0) for phases in rounds]
        print(f"{label}: {statistics.median(values):.2f} s (median; {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
