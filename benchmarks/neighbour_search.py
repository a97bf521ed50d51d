"""The feature metrics' neighbour search: candidates from a matrix product, beside exact sums over every pair.

    python benchmarks/neighbour_search.py [--boxes 6753 10000 25000] [--features 24] [--k 10] [--threads 1] [--repeat 3]

`agent.metrics.neighbours.nearest_neighbours` finds each box's k nearest by exact feature-by-feature
sums, but computes them only for the candidates a BLAS product proposes (within its rounding bound
of the k-th nearest). Before, it computed the exact sums for every pair (`_exact_rows`, still the path
for vectors too long for the product). This times both on the same standardised vectors, alternating,
`--repeat` rounds each, on `--threads` threads as `metricsmith score --workers N` runs it, checks that
the two tables are identical, and prints the medians and their ratio. The vectors: Dirichlet draws
(shares of a histogram, as `appearance_neighbours` returns), standardised as the scores standardise
them. 6,753 boxes is the 2,000-image demo's count. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.metrics import neighbours


def timed(search: neighbours.RowFunction, vectors: np.ndarray, k: int, threads: int) -> tuple[float, np.ndarray]:
    original = neighbours.neighbours_of_rows
    neighbours.neighbours_of_rows = search  # nearest_neighbours takes the row function by this name
    try:
        started = time.perf_counter()
        table = neighbours.nearest_neighbours(vectors, k, neighbours.in_threads(threads))
        return time.perf_counter() - started, table
    finally:
        neighbours.neighbours_of_rows = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, nargs="+", default=[6753, 10_000, 25_000])
    parser.add_argument("--features", type=int, default=24)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    searches = {"exact, every pair": neighbours._exact_rows, "product's candidates": neighbours.neighbours_of_rows}
    print(f"{args.features} features, k = {args.k}, {args.threads} thread(s), median of {args.repeat}")
    print("| boxes | exact, every pair | product's candidates | ratio | same table |")
    print("|---:|---:|---:|---:|---|")
    for count in args.boxes:
        shares = np.random.default_rng(count).dirichlet(np.full(args.features, 0.3), size=count)
        vectors = neighbours._standardised(shares)
        times: dict[str, list[float]] = {name: [] for name in searches}
        tables: dict[str, np.ndarray] = {}
        for round_number in range(args.repeat):
            order = list(searches) if round_number % 2 == 0 else list(reversed(searches))
            for name in order:
                elapsed, tables[name] = timed(searches[name], vectors, args.k, args.threads)
                times[name].append(elapsed)
        exact, fast = (statistics.median(times[name]) for name in searches)
        same = np.array_equal(*tables.values())
        print(f"| {count:,} | {exact:.2f} s | {fast:.2f} s | {exact / fast:.1f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
