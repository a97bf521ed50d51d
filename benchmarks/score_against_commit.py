"""`metricsmith score` with every built-in, now and as it was at an earlier commit, side by side.

    python benchmarks/score_against_commit.py [--commit e4269b1] [--images 2000] [--workers N] [--repeat 3]

Issue 14 asks that all built-ins together stay within 2x the time `score` took when it was filed
(commit e4269b1: 15 built-ins then). This runs both command lines on the same demo dataset
(`demo-data --images N --seed 0`, in metricsmith's cache), in turn, `--repeat` rounds each: the
commit's tree exported with `git archive` into a temporary folder and run from there (its own
`agent`, `sandbox` and `prompts/metrics/`, this environment's packages), and this checkout's. Each
run writes a JSON Lines file with its default built-ins. Prints both medians and their ratio, and each
round's ratio (the machine's speed drifts, moving a round's two runs alike). The
commit needs the repository's history (a clone has it). A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from score_speed import prepare_dataset

REPO = Path(__file__).resolve().parent.parent
FILED_AT = "e4269b1"  # the commit issue 14 was filed against
GOAL = 2.0


def export(commit: str, into: Path) -> None:
    """The commit's tree, written into `into` (nothing of this checkout changes)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def timed_score(tree: Path, annotations: Path, out: Path, workers: int) -> float:
    """One `metricsmith score` of the tree's default built-ins, in a fresh process; its wall time."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "agent.cli", "score", "--annotations", str(annotations), "--out", str(out)]
    command += ["--workers", str(workers)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"score failed in {tree} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def metric_count(out: Path) -> int:
    """How many metrics a JSON Lines score file has rows of."""
    return len({json.loads(line)["metric"] for line in out.read_text(encoding="utf-8").splitlines()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default=FILED_AT)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    annotations, _ = prepare_dataset(None, args.images, 0)
    with tempfile.TemporaryDirectory(prefix="metricsmith-commit-") as folder:
        then = Path(folder) / "tree"
        export(args.commit, then)
        trees = {args.commit: then, "now": REPO}
        times: dict[str, list[float]] = {name: [] for name in trees}
        metrics: dict[str, int] = {}
        for round_number in range(args.repeat):
            order = list(trees) if round_number % 2 == 0 else list(reversed(trees))
            for name in order:
                out = Path(folder) / f"{name}.jsonl"
                times[name].append(timed_score(trees[name], annotations, out, args.workers))
                metrics[name] = metric_count(out)
    print(f"{annotations}: {args.images} demo images, {args.workers} workers, {args.repeat} rounds, alternating")
    for name in trees:
        rounds = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name}: {metrics[name]} metrics, median {statistics.median(times[name]):.2f} s ({rounds})")
    ratio = statistics.median(times["now"]) / statistics.median(times[args.commit])
    # The machine's speed drifts over a minute or so, moving both runs of a round alike: each round's own
    # ratio shows how far the ratio of the medians can be trusted.
    paired = [now / then for now, then in zip(times["now"], times[args.commit], strict=True)]
    print(f"each round's now / {args.commit}: {', '.join(f'{r:.2f}' for r in paired)}")
    goal = f" (issue 14's goal <= {GOAL:g}): {'PASS' if ratio <= GOAL else 'MISS'}" if args.commit == FILED_AT else ""
    print(f"now / {args.commit} = {ratio:.2f}{goal}")


if __name__ == "__main__":
    main()
