"""A learned combination of metrics, scored only on items its training never saw.

`cross_validated_scores` fits an L2-regularised logistic regression that predicts "this item
carries a label error" from the metrics' suspicion ranks, and returns out-of-fold predictions:
the items are split into `folds` groups by image (all boxes of an image fall in one fold, so a
duplicate and its original are never split between training and scoring), and each fold is
scored by a model fitted on the other folds only. No item's own label ever reaches its score.

The inputs per item are each metric's suspicion rank in [0, 1] (0 = missing), whether it is
missing, and the product of every pair of ranks: the products let the model learn conjunctions
that no single metric expresses ("overlaps a same-class box AND fits its object worse").

Plain numpy, Newton's method on a few dozen columns: well under a second for thousands of items,
and no dependency on scikit-learn at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

__all__ = ["DEFAULT_FOLDS", "cross_validated_scores", "expand_features", "fit_logistic", "predict_logistic"]

DEFAULT_FOLDS = 5
_L2 = 1.0  # ridge penalty on the weights (not the intercept), in units of the log-likelihood
_NEWTON_STEPS = 50


def expand_features(ranks: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rank columns, missing-indicator columns and every pairwise product of ranks."""
    count, width = ranks.shape
    missing = (ranks == 0).astype(np.float64)
    pairs = [ranks[:, i] * ranks[:, j] for i in range(width) for j in range(i + 1, width)]
    products = np.column_stack(pairs) if pairs else np.empty((count, 0))
    return np.hstack([ranks, missing, products])


def fit_logistic(features: NDArray[np.float64], labels: NDArray[np.bool_], l2: float = _L2) -> NDArray[np.float64]:
    """Weights (intercept first) of an L2-penalised logistic regression, by Newton's method."""
    design = np.hstack([np.ones((len(features), 1)), features])
    target = labels.astype(np.float64)
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0
    weights = np.zeros(design.shape[1])
    prior = target.mean()
    weights[0] = np.log(prior / (1 - prior)) if 0 < prior < 1 else 0.0
    for _ in range(_NEWTON_STEPS):
        probability = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -30, 30)))
        gradient = design.T @ (probability - target) + penalty * weights
        curvature = (design * (probability * (1 - probability))[:, None]).T @ design + np.diag(penalty)
        step = _newton_step(curvature, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def _newton_step(curvature: NDArray[np.float64], gradient: NDArray[np.float64]) -> NDArray[np.float64]:
    """curvature⁻¹ · gradient. The ridge makes the curvature positive definite in all but freak cases, where
    an LU solve is several times cheaper than least squares (which `combined`'s per-seed fits in selftest
    spent most of their time in); least squares stays the fallback for a singular one."""
    try:
        return np.linalg.solve(curvature, gradient)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(curvature, gradient, rcond=None)[0]


def predict_logistic(weights: NDArray[np.float64], features: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-np.clip(weights[0] + features @ weights[1:], -30, 30)))


def fold_of_groups(groups: Sequence[int], folds: int, seed: int = 0) -> NDArray[np.intp]:
    """Each item's fold: its group's position in a seeded shuffle of the distinct groups, modulo folds."""
    distinct = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold = {group: int(order[index]) % folds for index, group in enumerate(distinct)}
    return np.array([fold[group] for group in groups], dtype=np.intp)


def cross_validated_scores(
    ranks: NDArray[np.float64], labels: Sequence[bool], groups: Sequence[int], folds: int = DEFAULT_FOLDS
) -> list[float]:
    """Out-of-fold predicted error probabilities, one per item (row of `ranks`)."""
    target = np.asarray(labels, dtype=bool)
    features = expand_features(np.asarray(ranks, dtype=np.float64))
    assignment = fold_of_groups(groups, folds)
    scores = np.zeros(len(target))
    # One BLAS thread: matrices of a few hundred columns gain nothing from more, and on a busy machine
    # (selftest's sandbox workers still finishing, other jobs) threads that wait for a core made these
    # fits over ten times slower. It also keeps the figures the same at any thread count.
    with threadpool_limits(limits=1, user_api="blas"):
        for fold in range(folds):
            held_out = assignment == fold
            if not held_out.any():
                continue
            train = ~held_out
            positives = int(target[train].sum())
            if positives == 0 or positives == int(train.sum()):
                # Nothing to learn from: every held-out item gets the training prevalence, a tie.
                scores[held_out] = positives / max(int(train.sum()), 1)
                continue
            weights = fit_logistic(features[train], target[train])
            scores[held_out] = predict_logistic(weights, features[held_out])
        return scores.tolist()
