"""The learned combination: the logistic fit against scikit-learn, and the cross-validation's honesty."""

from __future__ import annotations

import numpy as np
import pytest

from agent.evaluation.ranking import ErrorLabel, GroundTruth, MetricScores, evaluate
from agent.evaluation.stacking import (
    cross_validated_scores,
    expand_features,
    fit_logistic,
    fold_of_groups,
    predict_logistic,
)


def _toy(seed: int = 0, count: int = 400) -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    ranks = rng.uniform(0.01, 1.0, (count, 3))
    # The error hides in a conjunction: both first columns high.
    labels = (ranks[:, 0] > 0.6) & (ranks[:, 1] > 0.6) | (rng.uniform(size=count) < 0.03)
    groups = [index // 3 for index in range(count)]  # three "boxes" per "image"
    return ranks, labels, groups


def test_logistic_fit_matches_scikit_learn() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is the test-only reference")
    ranks, labels, _ = _toy()
    features = expand_features(ranks)
    ours = fit_logistic(features, labels, l2=1.0)
    # sklearn minimises 0.5·|w|² + C·Σ loss, with the intercept unpenalised: C = 1 / l2.
    reference = linear_model.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(features, labels)
    assert ours[0] == pytest.approx(reference.intercept_[0], abs=1e-4)
    assert ours[1:] == pytest.approx(reference.coef_[0], abs=1e-4)
    assert predict_logistic(ours, features) == pytest.approx(reference.predict_proba(features)[:, 1], abs=1e-5)


def test_features_are_ranks_missing_flags_and_pairwise_products() -> None:
    expanded = expand_features(np.array([[0.5, 0.0, 0.2]]))
    assert expanded.tolist() == [[0.5, 0.0, 0.2, 0.0, 1.0, 0.0, 0.0, 0.1, 0.0]]


def test_folds_keep_each_group_whole_and_are_balanced() -> None:
    groups = [g for g in range(50) for _ in range(g % 4 + 1)]
    folds = fold_of_groups(groups, 5)
    for group in set(groups):
        assert len({int(folds[i]) for i, g in enumerate(groups) if g == group}) == 1
    per_fold = [len({g for i, g in enumerate(groups) if folds[i] == fold}) for fold in range(5)]
    assert per_fold == [10] * 5
    assert np.array_equal(folds, fold_of_groups(groups, 5)), "seeded, so repeatable"


def test_an_items_score_never_depends_on_its_own_label() -> None:
    ranks, labels, groups = _toy()
    scores = np.asarray(cross_validated_scores(ranks, labels, groups))
    folds = fold_of_groups(groups, 5)
    for fold in range(5):
        flipped = labels.copy()
        flipped[folds == fold] = ~flipped[folds == fold]
        again = np.asarray(cross_validated_scores(ranks, flipped, groups))
        assert np.array_equal(again[folds == fold], scores[folds == fold])
        assert not np.array_equal(again[folds != fold], scores[folds != fold])


def test_learned_combination_finds_a_conjunction_the_average_cannot() -> None:
    ranks, labels, groups = _toy(seed=1, count=900)
    keys = list(range(1, len(labels) + 1))
    truth = GroundTruth(
        annotation_image={key: groups[key - 1] + 1 for key in keys},
        image_ids=sorted({group + 1 for group in groups}),
        errors=[
            ErrorLabel(type="shift", image_id=groups[key - 1] + 1, annotation_id=key) for key in keys if labels[key - 1]
        ],
    )
    metrics = [
        MetricScores(f"m{column}", "object", "high", {key: float(ranks[key - 1, column]) for key in keys})
        for column in range(3)
    ]
    rows = {row.metric: row for row in evaluate(truth, metrics).metrics}
    assert rows["combined"].ap > rows["rank_average"].ap + 0.1
    assert rows["combined"].ap > max(rows[f"m{c}"].ap for c in range(3)) + 0.1


def test_no_positive_to_learn_from_gives_a_tie() -> None:
    ranks = np.random.default_rng(2).uniform(size=(20, 2))
    assert len(set(cross_validated_scores(ranks, [False] * 20, list(range(20))))) == 1
