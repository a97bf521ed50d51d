"""How long the command line takes to start, against the floor of importing numpy and cv2.

    python benchmarks/cli_startup.py [--rounds 15]

Runs, interleaved in each round so that machine noise hits all of them alike:
  (base)  python -c "import numpy, cv2"     the floor: every metricsmith command needs both
  (help)  metricsmith --help                 goal: within 0.15 s of (base)
  (score) metricsmith score on 3 demo images with one built-in metric, sandbox included

and prints the median wall time of each, and each one's difference from (base).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_HELP_OVER_BASE_S = 0.15


def _metricsmith() -> list[str]:
    """The console script of this interpreter's environment, as a user runs it."""
    script = Path(sys.executable).parent / "metricsmith"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    cli = _metricsmith()
    work = Path(tempfile.mkdtemp(prefix="metricsmith-startup-"))
    try:
        subprocess.run([*cli, "demo-data", str(work / "demo"), "--images", "3"], check=True, capture_output=True)
        commands = {
            "base": [sys.executable, "-c", "import numpy, cv2"],
            "help": [*cli, "--help"],
            "score": [*cli, "score", "--annotations", str(work / "demo" / "annotations.json"),
                      "--metric", "builtin:brightness", "--out", str(work / "scores.csv"), "--workers", "1"],
        }  # fmt: skip
        for command in commands.values():  # warm the page cache and any .pyc files
            _timed(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(_timed(command))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.rounds} rounds, medians, on {Path(sys.executable).name} {sys.version.split()[0]}")
    print("| command | median | over `import numpy, cv2` |")
    print("|---|---:|---:|")
    labels = {"base": '`python -c "import numpy, cv2"`', "help": "`metricsmith --help`",
              "score": "`metricsmith score` (3 images, 1 metric)"}  # fmt: skip
    for name, median in medians.items():
        print(f"| {labels[name]} | {median:.3f} s | {median - medians['base']:+.3f} s |")
    over = medians["help"] - medians["base"]
    verdict = "PASS" if over <= GOAL_HELP_OVER_BASE_S else "MISS"
    print(f"--help over the baseline: {over:.3f} s (goal <= {GOAL_HELP_OVER_BASE_S} s): {verdict}")


if __name__ == "__main__":
    main()
