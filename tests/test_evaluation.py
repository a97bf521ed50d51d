"""The evaluation maths: ranking statistics, ties, pooling, per-type AP, baselines, file checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agent.evaluation.ranking import (
    ErrorLabel,
    GroundTruth,
    MetricScores,
    MismatchedFiles,
    auroc,
    average_precision,
    check_files,
    evaluate,
    pool_to_images,
    precision_at_k,
    rank_average,
    recall_at_budget,
    suspicion_ranks,
)
from agent.metrics.scoring import ScoreRow


@pytest.mark.parametrize("direction", ["high", "low"])
def test_ap_and_auroc_agree_with_sklearn_without_ties(direction: str) -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference (test extra)")
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 300))
        scores = rng.normal(size=n)
        labels = rng.random(n) < rng.uniform(0.02, 0.6)
        if labels.all() or not labels.any():
            labels[0] = not labels[0]
        suspicion = scores if direction == "high" else -scores
        ap = average_precision(scores.tolist(), labels.tolist(), direction)  # type: ignore[arg-type]
        roc = auroc(scores.tolist(), labels.tolist(), direction)  # type: ignore[arg-type]
        assert ap == pytest.approx(metrics.average_precision_score(labels, suspicion), abs=1e-9)
        assert roc == pytest.approx(metrics.roc_auc_score(labels, suspicion), abs=1e-9)


def test_ties_match_sklearn_step_definition() -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference (test extra)")
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=200).astype(float)
    labels = rng.random(200) < 0.3
    assert average_precision(scores.tolist(), labels.tolist(), "high") == pytest.approx(
        metrics.average_precision_score(labels, scores), abs=1e-9
    )
    assert auroc(scores.tolist(), labels.tolist(), "high") == pytest.approx(
        metrics.roc_auc_score(labels, scores), abs=1e-9
    )


@pytest.mark.parametrize("direction", ["high", "low"])
def test_all_equal_scores_are_worth_the_prevalence(direction: str) -> None:
    labels = [True, False, False, True, False, False, False, False]
    scores = [0.3] * len(labels)
    assert average_precision(scores, labels, direction) == pytest.approx(2 / 8)  # type: ignore[arg-type]
    assert auroc(scores, labels, direction) == 0.5  # type: ignore[arg-type]
    assert precision_at_k(scores, labels, direction) == pytest.approx(2 / 8)  # type: ignore[arg-type]


def test_ordering_by_id_earns_nothing() -> None:
    # Positives first in file order and all scores tied: a stable sort would put them on top.
    labels = [True, True, False, False, False, False]
    scores = [1.0] * 6
    assert average_precision(scores, labels, "high") == pytest.approx(2 / 6)
    assert auroc(scores, labels, "high") == 0.5
    assert precision_at_k(scores, labels, "high") == pytest.approx(2 / 6)
    reversed_labels = labels[::-1]
    assert average_precision(scores, reversed_labels, "high") == average_precision(scores, labels, "high")


@pytest.mark.parametrize("missing", [None, math.nan])
def test_missing_scores_rank_last_in_both_directions(missing: float | None) -> None:
    labels = [True, False, False]
    for direction, scores in (("high", [missing, 0.1, 0.2]), ("low", [missing, 0.9, 0.8])):
        assert average_precision(scores, labels, direction) == pytest.approx(1 / 3)  # type: ignore[arg-type]
        assert auroc(scores, labels, direction) == 0.0  # type: ignore[arg-type]
    # Two missing items tie with each other at the bottom.
    assert auroc([None, None, 1.0], [True, False, False], "high") == pytest.approx(0.25)


def test_undefined_statistics_are_none() -> None:
    assert average_precision([1.0, 2.0], [False, False], "high") is None
    assert auroc([1.0, 2.0], [True, True], "high") is None
    assert precision_at_k([1.0, 2.0], [False, False], "high") is None
    assert recall_at_budget([1.0, 2.0], [False, False], "high") is None


def test_precision_at_k_by_hand() -> None:
    scores = [0.9, 0.8, 0.7, 0.5, 0.5, 0.1]
    labels = [True, False, True, True, False, False]  # K = 3
    assert precision_at_k(scores, labels, "high") == pytest.approx(2 / 3)
    # Cut inside a tied block: top 4 = three certain items plus one slot of the {0.5, 0.5} block (1 positive).
    assert precision_at_k(scores, labels, "high", k=4) == pytest.approx((2 + 0.5) / 4)
    # Reversed: 0.1 (clean), then the whole {0.5, 0.5} block (one positive) fills K = 3.
    assert precision_at_k(scores, labels, "low") == pytest.approx(1 / 3)


def test_recall_at_budget_by_hand() -> None:
    # 40 items, 4 positives; 5% review = ceil(2.0) = 2 items.
    scores = [float(i) for i in range(40)]
    labels = [i in (39, 10, 5, 0) for i in range(40)]
    assert recall_at_budget(scores, labels, "high") == pytest.approx(1 / 4)
    assert recall_at_budget(scores, labels, "low") == pytest.approx(1 / 4)
    # 100 items: 5 reviewed (not 6 from 0.05 * 100 rounding up in floating point).
    scores = [float(i) for i in range(100)]
    labels = [i >= 94 for i in range(100)]
    assert recall_at_budget(scores, labels, "high") == pytest.approx(5 / 6)
    # 21 items: ceil(1.05) = 2 reviewed; the top two tie and hold one positive of two: 0.5 expected hit.
    scores = [1.0, 1.0] + [0.0] * 19
    labels = [True, False, True] + [False] * 18
    assert recall_at_budget(scores, labels, "high") == pytest.approx(1 / 2)
    assert recall_at_budget(scores, labels, "high", budget=1 / 21) == pytest.approx(0.25)


def test_image_pooling_takes_the_most_suspicious_box() -> None:
    annotation_image = {1: 10, 2: 10, 3: 20, 4: 30}
    scores = {1: 0.2, 2: 0.9, 3: None, 4: math.nan}
    assert pool_to_images(scores, annotation_image, "high") == {10: 0.9}
    assert pool_to_images(scores, annotation_image, "low") == {10: 0.2}


def test_suspicion_ranks_and_rank_average() -> None:
    assert suspicion_ranks([3.0, None, 1.0, 1.0], "high").tolist() == [1.0, 0.0, 0.5, 0.5]
    assert suspicion_ranks([3.0, 2.0, 1.0], "low").tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    combined = rank_average([([3.0, 2.0, 1.0], "high"), ([3.0, 2.0, 1.0], "low")])
    assert combined == pytest.approx([2 / 3, 2 / 3, 2 / 3])


def _truth() -> GroundTruth:
    # Three images: 1 holds a shifted box (11), 2 a duplicate (21), 3 a drop only; 4 is clean.
    annotation_image = {10: 1, 11: 1, 20: 2, 21: 2, 30: 3, 40: 4, 41: 4}
    errors = [
        ErrorLabel(type="shift", image_id=1, annotation_id=11),
        ErrorLabel(type="duplicate", image_id=2, annotation_id=21),
        ErrorLabel(type="drop", image_id=3, annotation_id=None),
    ]
    return GroundTruth(annotation_image=annotation_image, image_ids=[1, 2, 3, 4], errors=errors)


def test_evaluate_object_metric_per_type_and_image_ap() -> None:
    truth = _truth()
    # Finds the duplicate first, then clean boxes, the shifted box last.
    scores = {21: 0.9, 10: 0.5, 20: 0.4, 30: 0.3, 40: 0.2, 41: 0.15, 11: 0.1}
    report = evaluate(truth, [MetricScores("dup", "object", "high", scores)])
    result = report.metrics[0]
    assert (result.n_items, result.n_positive) == (7, 2)
    assert result.ap == pytest.approx((1 + 2 / 7) / 2)
    assert result.ap_by_type == {"shift": pytest.approx(1 / 6), "duplicate": 1.0, "drop": None}
    # Pooled image scores: 2 -> 0.9, 1 -> 0.5, 3 -> 0.3, 4 -> 0.2; dirty images 1, 2, 3.
    assert result.image_ap == 1.0
    assert report.prevalence.object == pytest.approx(2 / 7)
    assert report.prevalence.object_by_type == {"shift": pytest.approx(1 / 6), "duplicate": 1 / 6, "drop": None}
    assert report.prevalence.image == pytest.approx(3 / 4)
    random_row = report.metrics[1]
    assert random_row.metric == "random" and random_row.ap == report.prevalence.object
    assert random_row.ap_by_type == report.prevalence.object_by_type
    assert random_row.auroc == 0.5 and random_row.image_ap == pytest.approx(3 / 4)
    assert report.items.errors_by_type == {"shift": 1, "duplicate": 1, "drop": 1}


def test_evaluate_image_metric_counts_drops() -> None:
    truth = _truth()
    scores = {3: 5.0, 1: 4.0, 4: 3.0, 2: None}
    report = evaluate(truth, [MetricScores("count", "image", "high", scores)])
    result = report.metrics[0]
    assert (result.level, result.n_items, result.n_positive) == ("image", 4, 3)
    assert result.ap == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert result.image_ap == result.ap
    assert result.ap_by_type["drop"] == 1.0
    assert result.ap_by_type["duplicate"] == pytest.approx(1 / 2)  # image 2 (missing score) below clean image 4
    assert [row.metric for row in report.metrics] == ["count", "random"]


def test_combined_rank_average_on_a_toy_case() -> None:
    truth = _truth()
    # Each metric catches one error type; averaged, both dirty boxes come out on top.
    shift = {11: 1.0, 10: 0.0, 20: 0.0, 21: 0.5, 30: 0.0, 40: 0.0, 41: 0.0}
    dup = {21: 0.0, 11: 0.5, 10: 1.0, 20: 1.0, 30: 1.0, 40: 1.0, 41: 1.0}
    report = evaluate(
        truth, [MetricScores("shift", "object", "high", shift), MetricScores("dup", "object", "low", dup)]
    )
    names = [row.metric for row in report.metrics]
    assert names == ["shift", "dup", "random", "combined", "rank_average"]
    averaged = report.metrics[-1]
    assert averaged.ap == 1.0 and averaged.auroc == 1.0
    assert averaged.precision_at_k == 1.0


def test_report_json_has_the_documented_keys() -> None:
    report = evaluate(_truth(), [MetricScores("dup", "object", "high", {21: 1.0})])
    data = report.model_dump(mode="json")
    assert set(data) == {"items", "prevalence", "budget", "metrics"}
    assert set(data["metrics"][0]) == {
        "metric", "level", "direction", "n_items", "n_positive", "ap", "auroc", "precision_at_k",
        "recall_at_5pct", "ap_by_type", "image_ap",
    }  # fmt: skip


def test_mismatched_files_name_the_first_and_count() -> None:
    truth = _truth()
    check_files(truth, [ScoreRow("m", "object", 1, 10, 0.5), ScoreRow("i", "image", 4, None, 1.0)])
    bad = GroundTruth(
        annotation_image=truth.annotation_image,
        image_ids=truth.image_ids,
        errors=[*truth.errors, ErrorLabel(type="shift", image_id=1, annotation_id=999)],
    )
    with pytest.raises(MismatchedFiles, match=r"annotation_id 999, not in annotations.json \(3 mismatched"):
        check_files(bad, [ScoreRow("m", "object", 9, None, 0.5), ScoreRow("m", "object", 1, 20, 0.5)])
    with pytest.raises(MismatchedFiles, match=r"row 1 has image_id 9.*\(1 mismatched"):
        check_files(truth, [ScoreRow("m", "image", 9, None, 0.5)])
    with pytest.raises(MismatchedFiles, match="annotation_id 20, of another image"):
        check_files(truth, [ScoreRow("m", "object", 1, 20, 0.5)])


def test_a_mismatch_names_the_annotations_file_it_was_checked_against(tmp_path: Path) -> None:
    # It always said "not in annotations.json", whatever the file was called.
    from agent.data.coco import coco_from_document
    from agent.evaluation.ranking import ground_truth

    document = {"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}], "annotations": [],
                "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    truth = ground_truth(coco_from_document(document, tmp_path / "half.json", tmp_path))
    with pytest.raises(MismatchedFiles, match=r"row 1 has image_id 7, not in half.json"):
        check_files(truth, [ScoreRow("m", "image", 7, None, 0.5)])
