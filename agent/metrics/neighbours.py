"""Feature metrics' scores: how many of a box's nearest neighbours carry another class.

A feature metric (`OUTPUT = "features"` in its file) returns a vector per box instead of a score,
because one box alone cannot say whether it looks like the rest of its class. metricsmith
gathers every box's vector and scores each box here, with plain numpy:

1. Each feature is standardised over the dataset (mean 0, standard deviation 1; a constant
   feature is dropped), so no feature dominates the distance by its units alone.
2. The k nearest other boxes by Euclidean distance are found by brute force, exactly: the squared
   distance is the sum of squared differences taken feature by feature with elementwise operations
   (IEEE rounds each of those the same way on every CPU), ties going to the lower index. A BLAS
   matrix product (|a|² + |b|² - 2a·b) is used only to find the candidates: its rounding depends on
   the kernel and thread count a machine picks, so near a tie it could pick other boxes. Its error
   has a proven bound (`_rounding`), and every box within twice that bound of the k-th nearest by
   the product is a candidate; the candidates' exact distances then decide, and the boxes they pick
   are the ones an exact search of all boxes picks. The product and a partial sort cost about a
   third of the exact sums over every pair.
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
from threadpoolctl import threadpool_limits

__all__ = [
    "RowFunction", "RowMapper", "class_disagreement", "in_threads", "nearest_neighbours", "neighbours_of_rows",
]  # fmt: skip

_BLOCK_BYTES = 2 * 1024 * 1024
_EPSILON = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)
# Past this squared length a product's terms could overflow; such (unstandardised) vectors take the exact path.
_LARGEST_NORM = 1e100
_STRIDE = 4


def _rounding(features: int) -> float:
    """A bound, relative to |a|² + |b|², on how far the product's squared distance may lie from the exact sums'.

    Both approximate the true squared distance t of two vectors a and b of d features. The sum of d rounded
    squared differences lies within (d + 2)·eps/2 of t, relatively, and t is at most 2(|a|² + |b|²); the
    product (a dot product summed in any order, two squared lengths, two additions) lies within about
    (d + 2)·eps·(|a|² + |b|²) of t too. So the two differ by at most (2d + 4)·eps·(|a|² + |b|²): this is
    four times that, for the squared lengths' own rounding and a margin.
    """
    return 4 * (2 * features + 4) * _EPSILON


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
    squared = np.einsum("fi,fi->i", columns, columns)
    if not squared.size or not np.isfinite(squared).all() or squared.max() > _LARGEST_NORM:
        return _exact_rows(columns, start, stop, k)
    features, count = columns.shape
    points = np.ascontiguousarray(columns.T)
    slack = _rounding(features) * (squared + squared.max()) + 8 * features * _TINY  # per row: what rounding moves
    block = max(1, _BLOCK_BYTES // (8 * count))
    stride = _STRIDE if count >= _STRIDE * (k + 2) else 1  # every row keeps k others among the sampled
    result = np.empty((stop - start, k), dtype=np.intp)
    for first in range(start, stop, block):
        last = min(first + block, stop)
        rows = np.arange(last - first)
        approximate = points[first:last] @ points.T
        approximate *= -2
        approximate += squared[first:last, None]
        approximate += squared[None, :]
        approximate[rows, rows + first] = np.inf
        # An upper bound on each row's k-th smallest product distance: the k-th smallest of every `stride`-th
        # box's (a quarter of the sorting; a few more candidates below).
        kth = np.partition(approximate[:, ::stride], k - 1, axis=1)[:, k - 1]
        # Every box whose exact distance could be among the k smallest (ties at the k-th too): one at the exact
        # k-th distance lies within one slack of the k-th smallest product distance, which is within one slack
        # of the exact one, and no greater than `kth`.
        row, candidate = np.nonzero(approximate <= (kth + 2 * slack[first:last])[:, None])
        exact = np.zeros(len(row))
        difference = np.empty_like(exact)
        for feature in columns:
            np.subtract(feature[row + first], feature[candidate], out=difference)
            np.multiply(difference, difference, out=difference)
            np.add(exact, difference, out=exact)
        order = np.lexsort((candidate, exact, row))  # by row, then distance, then the lower index
        starts = np.searchsorted(row[order], rows)  # each row has k candidates or more
        result[first - start : last - start] = candidate[order][starts[:, None] + np.arange(k)]
    return result


def _exact_rows(columns: NDArray[np.float64], start: int, stop: int, k: int) -> NDArray[np.intp]:
    """`neighbours_of_rows` from the exact distances of every pair: for vectors too long for the product. It was
    every search until 2026-12-07; `benchmarks/neighbour_search.py` times the two side by side."""
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
    # The candidates' products are many small ones, side by side in `map_rows`'s threads: BLAS's own threads
    # for each only wait on one another (several times slower on 2 cores). The limit is the process's, so it is
    # set here, once.
    with threadpool_limits(limits=1, user_api="blas"):
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
