"""The usefulness check: targets, the seeded usefulness set and its two halves, and the verdict rule."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import UserError
from agent.evaluation.ranking import average_precision
from agent.evaluation.usefulness import MIN_POSITIVES, judge, parse_targets, usefulness_set


def _document(images: int = 300, boxes: int = 3) -> dict:
    rng = np.random.default_rng(7)
    annotations = []
    for image in range(1, images + 1):
        for k in range(boxes):
            x, y = int(rng.integers(0, 400)), int(rng.integers(0, 300))
            w, h = int(rng.integers(20, 120)), int(rng.integers(20, 120))
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": 1 + k % 2,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, images + 1)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def test_targets_are_error_types_or_a_property() -> None:
    assert parse_targets("loose, shift") == ("shift", "loose")
    assert parse_targets(["property"]) == ("property",)
    for bad, message in [("shfit", "unknown target 'shfit'"), ("", "empty target"), ("property,swap", "of its own")]:
        with pytest.raises(UserError, match=message):
            parse_targets(bad)


def test_the_set_is_seeded_split_in_two_and_holds_enough_target_errors() -> None:
    document = _document(images=600)
    useful = usefulness_set(document, ("shift", "loose"), seed=3)
    assert useful == usefulness_set(document, ("shift", "loose"), seed=3), "a replay gets the same set"
    assert useful.document != usefulness_set(document, ("shift", "loose"), seed=4).document
    assert not useful.selection & useful.reporting
    assert {int(i["id"]) for i in useful.document["images"]} == useful.selection | useful.reporting
    assert {error.type for error in useful.errors} == {"shift", "loose"}
    for half in (useful.selection, useful.reporting):
        assert all(count >= 30 for count in useful.errors_in(half).values()), useful.errors_in(half)
    # Only a sample was needed: 2 halves x 40 errors x 2 types at rate 0.2, and a quarter more, is 1000 boxes.
    assert len(useful.document["images"]) == 334 and not useful.notes

    small = usefulness_set(_document(images=20), ("swap",), seed=0)
    assert small.notes and "the dataset is small" in small.notes[-1]


def _scores(useful, rule) -> dict[int, float]:  # type: ignore[no-untyped-def]
    dirty = {error.annotation_id for error in useful.errors}
    return {int(a["id"]): rule(int(a["id"]) in dirty) for a in useful.document["annotations"]}


def test_a_constant_a_random_and_a_perfect_metric() -> None:
    useful = usefulness_set(_document(), ("shift",), seed=1)
    half = useful.reporting
    constant = judge(_scores(useful, lambda dirty: 0.5), "object", "high", useful, half, seed=0)
    assert constant.passed is False and constant.ap == pytest.approx(constant.random)
    assert constant.lower == pytest.approx(0.0) and constant.upper == pytest.approx(0.0)

    noise = np.random.default_rng(11)
    random = judge(_scores(useful, lambda dirty: float(noise.random())), "object", "high", useful, half, seed=0)
    assert random.passed is False and random.lower is not None and random.lower < 0 < (random.upper or 0)

    perfect = judge(_scores(useful, float), "object", "high", useful, half, seed=0)
    assert perfect.passed is True and perfect.ap == pytest.approx(1.0) and perfect.by_type["shift"][0] == 1.0
    # Low is suspicious: the same ranking read the other way round is the worst, not the best.
    assert judge(_scores(useful, float), "object", "low", useful, half, seed=0).passed is False
    assert "clears random" in perfect.line() and "not shown better" in random.line()


def test_an_idea_about_one_class_is_judged_on_the_boxes_labelled_that_class() -> None:
    useful = usefulness_set(_document(images=120), ("swap",), seed=5)
    half = useful.selection
    dog = {c["id"] for c in useful.document["categories"] if c["name"] == "dog"}
    labelled_dog = {int(a["id"]) for a in useful.document["annotations"] if a["category_id"] in dog}
    dirty = {error.annotation_id for error in useful.errors}
    # "dog boxes that are really cats": it scores only the dog boxes, and finds every swap among them.
    scores = {key: float(key in dirty) for key in labelled_dog}
    scoped = judge(scores, "object", "high", useful, half, seed=0, scope="dog")
    in_half = {int(a["id"]) for a in useful.document["annotations"] if a["image_id"] in half}
    assert scoped.items == len(labelled_dog & in_half)
    assert scoped.positives == len(labelled_dog & in_half & dirty) >= MIN_POSITIVES
    assert scoped.ap == pytest.approx(1.0) and scoped.passed is True
    assert f"among {scoped.items} dog boxes" in scoped.line()
    # Judged on every box, the swaps into "cat" it was never meant to see sink its AP to the share it can see.
    unscoped = judge(scores, "object", "high", useful, half, seed=0)
    assert unscoped.items == len(in_half) and unscoped.positives > scoped.positives
    assert unscoped.ap is not None and unscoped.ap < 0.75
    # The scope is no way to choose the easy items: a metric that misses the dog swaps still fails on them.
    backwards = judge(scores, "object", "low", useful, half, seed=0, scope="dog")
    assert backwards.passed is False


def test_the_figure_is_the_tie_aware_ap_of_the_half() -> None:
    useful = usefulness_set(_document(), ("loose",), seed=2)
    half = useful.selection
    scores = {int(a["id"]): float(a["bbox"][2] * a["bbox"][3]) for a in useful.document["annotations"]}
    verdict = judge(scores, "object", "high", useful, half, seed=0)
    dirty = {error.annotation_id for error in useful.errors}
    keys = sorted(int(a["id"]) for a in useful.document["annotations"] if int(a["image_id"]) in half)
    assert verdict.items == len(keys) and verdict.positives == sum(key in dirty for key in keys)
    assert verdict.ap == pytest.approx(average_precision([scores[k] for k in keys], [k in dirty for k in keys], "high"))
    assert verdict.random == pytest.approx(verdict.positives / verdict.items)


def test_drops_are_judged_on_images_and_too_few_errors_get_no_verdict() -> None:
    useful = usefulness_set(_document(), ("drop",), seed=5)
    dropped = {error.image_id for error in useful.errors}
    counts = {int(i["id"]): 0.0 for i in useful.document["images"]}
    for annotation in useful.document["annotations"]:
        counts[int(annotation["image_id"])] += 1
    # An image that lost a box has fewer boxes than the others (3 each): few boxes is suspicious.
    verdict = judge(counts, "image", "low", useful, useful.reporting, seed=0)
    assert verdict.level == "image" and verdict.positives == len(dropped & useful.reporting)
    assert verdict.passed is True

    few = frozenset(sorted(dropped & useful.reporting)[: MIN_POSITIVES - 1])
    assert judge(counts, "image", "low", useful, few, seed=0).passed is None


@pytest.mark.parametrize("images", [24, 300])
def test_a_random_metric_clears_the_bar_about_one_time_in_twenty_whatever_the_size(images: int) -> None:
    # The rule that came before (a bootstrap interval over images) let 35% of random metrics through
    # with nine errors in a half; the permutation test's false-pass rate does not depend on the size.
    useful = usefulness_set(_document(images=images), ("shift",), seed=4)
    noise = np.random.default_rng(images)
    trials = 200
    passed = sum(
        bool(judge(_scores(useful, lambda dirty: float(noise.random())), "object", "high", useful, useful.selection,
                   seed=trial, resamples=20).passed)
        for trial in range(trials)
    )  # fmt: skip
    # 5% expected; 0.1 is more than four standard errors above it at 200 trials.
    assert passed / trials <= 0.1, passed
    perfect = judge(_scores(useful, float), "object", "high", useful, useful.selection, seed=0)
    assert perfect.passed is True and perfect.margin > 0 and perfect.p_value is not None and perfect.p_value < 0.05


def test_the_worst_misses_name_the_error_and_where_the_metric_put_it() -> None:
    from agent.evaluation.misses import worst_misses

    useful = usefulness_set(_document(), ("loose",), seed=2)
    dirty = {error.annotation_id for error in useful.errors}
    # Scores that rank every loose box as clean and one clean box (the first) as the most suspicious.
    first_clean = min(int(a["id"]) for a in useful.document["annotations"] if int(a["id"]) not in dirty
                      and int(a["image_id"]) in useful.selection)  # fmt: skip
    scores = {int(a["id"]): (0.0 if int(a["id"]) in dirty else 0.5) for a in useful.document["annotations"]}
    scores[first_clean] = 1.0
    misses = worst_misses(scores, "object", "high", useful, useful.selection)
    assert [m.kind for m in misses] == ["missed_error"] * 3 + ["false_alarm"] * 2
    missed = misses[0].words
    assert "injected loose: grown from the true box" in missed
    assert "x the median cat box's area" in missed or "x the median dog box's area" in missed
    assert "most suspicious of" in missed and "score 0" in missed and "tied with" in missed
    assert misses[3].words.startswith(f"annotation {first_clean} ") and "ranked 1st most suspicious" in misses[3].words
    # Only the half asked for is described: the reporting half's boxes never appear.
    shown = {int(m.words.split()[1]) for m in misses}
    owner = {int(a["id"]): int(a["image_id"]) for a in useful.document["annotations"]}
    assert all(owner[key] in useful.selection for key in shown)
