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
