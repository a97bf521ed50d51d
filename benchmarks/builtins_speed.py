"""What the learned detectors cost: every built-in metric against the built-ins without them, side by side.

    python benchmarks/builtins_speed.py [--images 2000] [--workers N] [--repeat 3]

(a) `score_dataset` with the hand-written built-ins (every built-in but `builtin:learned`'s six
    metrics), the way `metricsmith score` ran before the learned detectors came;
(b) `score_dataset` with every built-in: (a) plus the learned detectors, which describe each box and
    each training box, and fit 30 small classifiers on the host.

Both in the sandbox on the same demo dataset (generated into metricsmith's cache), alternating, in
one run; the median of each is compared with issue 14's goal, (b)/(a) <= 2. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from score_speed import prepare_dataset

GOAL_ALL_OVER_HANDWRITTEN = 2.0


def timed(annotations: Path, specs: list, workers: int) -> float:
    from agent.data.coco import load_coco
    from agent.metrics.scoring import score_dataset
    from sandbox.isolation import SandboxConfig

    started = time.perf_counter()
    outcome = score_dataset(load_coco(annotations), specs, SandboxConfig(workers=workers))
    assert outcome.failed == 0, "every call should score"
    return time.perf_counter() - started


def main() -> None:
    from agent.metrics.contract import list_builtin_metrics

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    annotations, _ = prepare_dataset(args.data, args.images, 0)
    everything = list_builtin_metrics()
    handwritten = [spec for spec in everything if spec.combine != "learned"]
    times: dict[str, list[float]] = {"handwritten": [], "all": []}
    for _ in range(args.repeat):
        times["handwritten"].append(timed(annotations, handwritten, args.workers))
        times["all"].append(timed(annotations, everything, args.workers))
    a, b = statistics.median(times["handwritten"]), statistics.median(times["all"])
    print(f"{args.images} demo images, {args.workers} workers, {args.repeat} rounds (median wall time)")
    print(f"(a) {len(handwritten)} hand-written built-ins: {a:.2f} s")
    print(f"(b) all {len(everything)} built-ins: {b:.2f} s")
    verdict = "PASS" if b / a <= GOAL_ALL_OVER_HANDWRITTEN else "MISS"
    print(f"(b)/(a) = {b / a:.2f} (goal <= {GOAL_ALL_OVER_HANDWRITTEN:g}): {verdict}")


if __name__ == "__main__":
    main()
