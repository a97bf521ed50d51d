"""The driver's memory under `--engine ray`: rows gathered into one file, against parts the actors write.

    python benchmarks/driver_memory.py [--images 200 800] [--metric builtin:NAME ...] [--data DIR]

For each size, demo data is generated (`metricsmith demo-data`), then `metricsmith score --engine ray`
runs twice on it, each in a fresh process: `--out scores.parquet` (every row gathered at the
driver, then written) and `--out parts/` (the actors write the rows, the driver gets summaries). The
process reports its own peak RSS (`ru_maxrss`, the driver alone: Ray's daemons and actors are other
processes). Per image is the slope between the two sizes, so the fixed cost of Python, Ray and the
metrics' imports cancels out. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Runs `metricsmith score` in this process, then prints its peak RSS in KiB (Linux's ru_maxrss unit).
_MEASURED = """
import resource, sys
from agent.cli.main import main
code = main(sys.argv[1:])
print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "exit", code, file=sys.stderr)
"""
MODES = {"gathered (.parquet)": "scores.parquet", "parts (DIR/)": "parts/"}


def peak_kib(annotations: Path, out: str, metrics: list[str], engine: str) -> int:
    """The driver's peak RSS for one `metricsmith score` run."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", _MEASURED, "score", "--annotations", str(annotations), "--out", out]
    command += ["--engine", engine, *(arg for metric in metrics for arg in ("--metric", metric))]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    line = next((line for line in done.stderr.splitlines() if line.startswith("peak_kib ")), None)
    if line is None or line.split()[-1] not in ("0", "1"):  # 1: some items failed, which is a result
        raise SystemExit(f"score failed:\n{done.stderr[-2000:]}")
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs=2, default=(200, 800), metavar=("SMALL", "LARGE"))
    parser.add_argument("--metric", action="append", default=[], help="builtin:NAME (default: every built-in)")
    parser.add_argument("--engine", default="ray", choices=("ray", "local"))
    parser.add_argument("--data", type=Path, help="where to put the demo data (default: a temporary folder)")
    args = parser.parse_args()
    root = args.data or Path(tempfile.mkdtemp(prefix="metricsmith-driver-memory-"))
    peaks: dict[str, list[int]] = {mode: [] for mode in MODES}
    for images in args.images:
        data = root / f"demo-{images}"
        if not (data / "annotations.json").exists():
            subprocess.run([sys.executable, "-m", "agent.cli", "demo-data", str(data), "--images", str(images)],
                           check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
        for mode, out in MODES.items():
            run = root / f"out-{images}-{mode.split()[0]}"
            run.mkdir(exist_ok=True)
            target = f"{run}/{out}"  # a Path would drop the slash that asks for parts
            shutil.rmtree(run / "parts", ignore_errors=True)  # --out DIR/ must be new or empty
            peaks[mode].append(peak_kib(data / "annotations.json", target, args.metric, args.engine))
    small, large = args.images
    print(f"driver peak RSS, --engine {args.engine}, {'every built-in' if not args.metric else ' '.join(args.metric)}")
    print(f"| | {small:,} images | {large:,} images | per image (slope) |")
    print("|---|---|---|---|")
    for mode, (low, high) in peaks.items():
        slope = (high - low) / (large - small)
        print(f"| {mode} | {low / 1024:.0f} MiB | {high / 1024:.0f} MiB | {slope:.1f} KiB |")


if __name__ == "__main__":
    main()
