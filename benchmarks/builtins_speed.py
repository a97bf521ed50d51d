"""What the learned detectors cost: every built-in metric against the built-ins without them, side by side.

    python benchmarks/builtins_speed.py [--images 2000] [--workers N] [--repeat 3] [--without NAME,...]

(a) `score_dataset` with the hand-written built-ins (every built-in but `builtin:learned`'s six
    metrics), the way `metricsmith score` ran before the learned detectors came;
(b) `score_dataset` with every built-in: (a) plus the learned detectors, which describe each box and
    each training box, and fit 30 small classifiers on the host.

With `--without`, (a') too: (a) minus the named built-ins, to show what those cost the hand-written
set (say, metrics just added). All in the sandbox on the same demo dataset (generated into
metricsmith's cache), alternating, in one run; the median of each is compared with issue 14's goal,
(b)/(a) <= 2. A benchmark, not a test.
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
    parser.add_argument("--without", default="", help="comma-separated built-ins to leave out of (a')")
    args = parser.parse_args()
    annotations, _ = prepare_dataset(args.data, args.images, 0)
    everything = list_builtin_metrics()
    handwritten = [spec for spec in everything if spec.combine != "learned"]
    left_out = {name for name in args.without.split(",") if name}
    unknown = left_out - {spec.name for spec in handwritten}
    if unknown:
        parser.error(f"--without names no hand-written built-in: {', '.join(sorted(unknown))}")
    fewer = [spec for spec in handwritten if spec.name not in left_out]
    times: dict[str, list[float]] = {"handwritten": [], "all": [], "fewer": []}
    for _ in range(args.repeat):
        if left_out:
            times["fewer"].append(timed(annotations, fewer, args.workers))
        times["handwritten"].append(timed(annotations, handwritten, args.workers))
        times["all"].append(timed(annotations, everything, args.workers))
    a, b = statistics.median(times["handwritten"]), statistics.median(times["all"])
    print(f"{args.images} demo images, {args.workers} workers, {args.repeat} rounds (median wall time)")
    if left_out:
        fewer_time = statistics.median(times["fewer"])
        print(f"(a') {len(fewer)} hand-written built-ins, without {', '.join(sorted(left_out))}: {fewer_time:.2f} s")
        print(f"(a)/(a') = {a / fewer_time:.2f}")
    print(f"(a) {len(handwritten)} hand-written built-ins: {a:.2f} s")
    print(f"(b) all {len(everything)} built-ins: {b:.2f} s")
    verdict = "PASS" if b / a <= GOAL_ALL_OVER_HANDWRITTEN else "MISS"
    print(f"(b)/(a) = {b / a:.2f} (goal <= {GOAL_ALL_OVER_HANDWRITTEN:g}): {verdict}")


if __name__ == "__main__":
    main()
