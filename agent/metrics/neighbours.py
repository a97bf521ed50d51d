"""Feature metrics' scores: how many of a box's nearest neighbours carry another class.

A feature metric (`OUTPUT = "features"` in its file) returns a vector per box instead of a score,
because one box alone cannot say whether it looks like the rest of its class. metricsmith
gathers every box's vector and scores each box here, with plain numpy:

1. Each feature is standardised over the dataset (mean 0, standard deviation 1; a constant
   feature is dropped), so no feature dominates the distance by its units alone.
2. The k nearest other boxes by Euclidean distance are found by brute force, in blocks of rows
   small enough (`_BLOCK_BYTES`) that one block's distances stay in the CPU cache across the
   passes over the features: the passes are memory-bound, and cache-sized blocks make them about
   3x faster than 64 MB ones, with the very same arithmetic. Squared distances are
   summed feature by feature with elementwise operations, not with a matrix product: IEEE
   rounds each of those the same way on every CPU, while a BLAS product's rounding depends on
   the kernel and thread count that the machine picks, and on a near tie that changes which
   boxes are neighbours. Exact ties go to the lower index.
3. The score is the share of those k neighbours whose class differs from the box's own label:
   0 when every neighbour agrees, 1 when none does. High is suspicious.

The result is deterministic: the same vectors in the same order give the same scores, on any machine.
Each row's neighbours depend on that row and the whole matrix only, so the rows may be computed in
ranges anywhere (the Ray engine spreads them over its cluster) and the table is the same.
With fewer than two boxes there are no neighbours and every score is None.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "RowFunction", "RowMapper", "class_disagreement", "in_threads", "nearest_neighbours", "neighbours_of_rows",
]  # fmt: skip

_BLOCK_BYTES = 2 * 1024 * 1024


def _standardised(vectors: NDArray[np.float64]) -> NDArray[np.float64]:
    spread = vectors.std(axis=0)
    varying = spread > 1e-12
    return (vectors[:, varying] - vectors[:, varying].mean(axis=0)) / spread[varying]


# Rows [start, stop) of the neighbour table from the feature columns and k: `neighbours_of_rows`.
RowFunction = Callable[[NDArray[np.float64], int, int, int], NDArray[np.intp]]
# Runs a RowFunction over every row of the columns, in one go or in ranges elsewhere (a Ray cluster's tasks,
# `sandbox.distributed.RayEngine.map_rows`), and returns the whole table.
RowMapper = Callable[[RowFunction, NDArray[np.float64], int], NDArray[np.intp]]


def neighbours_of_rows(columns: NDArray[np.float64], start: int, stop: int, k: int) -> NDArray[np.intp]:
    """Rows start..stop-1 of `nearest_neighbours`, from the features as one contiguous row per feature.

    Each row's answer depends on that row and the columns only, never on which rows share its block,
    so any split of the rows into ranges gives the very same table.
    """
    count = columns.shape[1]
    block = max(1, _BLOCK_BYTES // (16 * count))  # the distances and one feature's differences
    result = np.empty((stop - start, k), dtype=np.intp)
    for first in range(start, stop, block):
        last = min(first + block, stop)
        distances = np.zeros((last - first, count))
        difference = np.empty_like(distances)
        for feature in columns:
            np.subtract(feature[first:last, None], feature[None, :], out=difference)
            np.multiply(difference, difference, out=difference)
            np.add(distances, difference, out=distances)
        rows = np.arange(last - first)
        distances[rows, rows + first] = np.inf
        candidates = np.argpartition(distances, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(distances, candidates, axis=1)
        # argpartition picks any of the items tied at the k-th distance; where it left out a tied item
        # of lower index, that row is sorted whole, stably, so the lower indices are the ones taken.
        kth = picked.max(axis=1, keepdims=True)
        unfair = (distances == kth).sum(axis=1) > (picked == kth).sum(axis=1)
        for row in np.flatnonzero(unfair):
            candidates[row] = np.argsort(distances[row], kind="stable")[:k]
            picked[row] = distances[row, candidates[row]]
        order = np.lexsort((candidates, picked), axis=1)
        result[first - start : last - start] = np.take_along_axis(candidates, order, axis=1)
    return result


def _here(function: RowFunction, columns: NDArray[np.float64], k: int) -> NDArray[np.intp]:
    return function(columns, 0, columns.shape[1], k)


def in_threads(threads: int) -> RowMapper:
    """A RowMapper that splits the rows into `threads` ranges and runs them side by side in this process.

    The passes are numpy's elementwise operations on whole blocks, which let go of the interpreter's
    lock, so the ranges do run at once; the table is the same as from one range.
    """

    def map_rows(function: RowFunction, columns: NDArray[np.float64], k: int) -> NDArray[np.intp]:
        count = columns.shape[1]
        bounds = np.linspace(0, count, max(1, threads) + 1).astype(int).tolist()
        ranges = [(start, stop) for start, stop in itertools.pairwise(bounds) if stop > start]
        if len(ranges) < 2:
            return function(columns, 0, count, k)
        with ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="neighbours") as pool:
            parts = list(pool.map(lambda bound: function(columns, bound[0], bound[1], k), ranges))
        return np.concatenate(parts)

    return map_rows


def nearest_neighbours(vectors: NDArray[np.float64], k: int, map_rows: RowMapper | None = None) -> NDArray[np.intp]:
    """Row i: the indices of the k rows nearest to row i, itself excluded, nearest first.

    `map_rows` runs `neighbours_of_rows` over the rows (in this process by default); the table is the same.
    """
    count = len(vectors)
    k = min(k, count - 1)
    if k < 1:
        return np.empty((count, 0), dtype=np.intp)
    columns = np.ascontiguousarray(vectors.T)  # one contiguous row per feature
    return (map_rows or _here)(neighbours_of_rows, columns, k)


def class_disagreement(
    vectors: Sequence[Sequence[float]],
    classes: Sequence[int],
    k: int,
    map_rows: RowMapper | None = None,
) -> list[float | None]:
    """Each item's share of its k nearest neighbours (in standardised feature space) of another class.

    All vectors must have the same length; the caller checks that with the user-facing message.
    `map_rows`: see `nearest_neighbours`; the scores do not depend on it.
    """
    if len(vectors) != len(classes):
        raise ValueError("one class per vector")
    if len(vectors) < 2:
        return [None] * len(vectors)
    matrix = _standardised(np.asarray(vectors, dtype=np.float64))
    labels = np.asarray(classes)
    neighbours = nearest_neighbours(matrix, k, map_rows)
    differing = labels[neighbours] != labels[:, None]
    return differing.mean(axis=1).tolist()
