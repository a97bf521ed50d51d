"""How many score() calls `metricsmith selftest` must make per metric, over one `score`'s calls: its floor.

    python benchmarks/selftest_calls.py [--images 1000] [--seeds 3] [--rate 0.2] [--data FILE|DIR]

selftest scores its K noisy copies in one run and makes each distinct call once
(`agent.metrics.scoring.score_versions`): a call is shared between copies only where the metric
provably sees the same input (`agent.metrics.inputs`). This runs selftest's own injection and
planning with an engine that counts the calls it is handed instead of running them, so nothing is
scored and the counts are exact. Per hand-written built-in it prints what `score()` reads (pixels,
its own box, or the scene), the calls selftest makes, and their ratio to one `score` of the
original dataset: no reuse that keeps each copy's rows equal to scoring that copy alone can go
below it. The learned detectors are left out: each copy trains its own (see the README).
A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from score_speed import prepare_dataset


class CallCounter:
    """An engine that runs nothing: it counts the calls of each metric code in the tasks it is given."""

    map_rows = None
    writes_batches = False

    def __init__(self, config: object) -> None:
        self.calls: Counter[int] = Counter()

    def run(self, metrics: list, tasks: Iterable, sink: Callable[[list], None]) -> object:
        from sandbox.engine import RunReport

        for task in tasks:
            if task.image_id >= 0:  # negative numbers are the learned metrics' training tasks
                self.calls.update(call.metric for call in task.calls)
        return RunReport()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--data", type=Path, help="an annotations file or folder to use instead of the demo")
    args = parser.parse_args()

    from agent.data.coco import load_coco, read_coco_json
    from agent.evaluation.selftest import score_noisy_copies
    from agent.metrics.contract import list_builtin_metrics
    from agent.metrics.inputs import metric_inputs
    from sandbox.isolation import SandboxConfig

    annotations, _ = prepare_dataset(args.data, args.images, 0)
    dataset = load_coco(annotations)
    specs = [spec for spec in list_builtin_metrics() if spec.combine != "learned"]
    engines: list[CallCounter] = []

    def counting(config: SandboxConfig) -> CallCounter:
        engines.append(CallCounter(config))
        return engines[-1]

    score_noisy_copies(
        read_coco_json(annotations), annotations, dataset.image_root, specs,
        seeds=list(range(args.seeds)), rate=args.rate, sandbox=SandboxConfig(), engine=counting,
    )  # fmt: skip
    calls = engines[0].calls
    boxes = len(dataset.annotations)
    print(f"{annotations}: {len(dataset.images)} images, {boxes} boxes; {args.seeds} seeds, rate {args.rate:g}")
    print()
    print("| metric | reads | calls | over one score |")
    print("|---|---|---:|---:|")
    for index, spec in enumerate(specs):  # no two hand-written built-ins share a code, so code index = spec index
        what = metric_inputs(spec.source, spec.level).depends_on(spec.level)
        one = len(dataset.images) if spec.level == "image" else boxes
        print(f"| `{spec.name}` | {what} | {calls[index]} | {calls[index] / one:.2f} |")


if __name__ == "__main__":
    main()
