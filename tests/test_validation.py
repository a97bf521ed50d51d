"""Validation of candidate metrics: the validation set, every check on real sandbox runs, and evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.authoring.repair import repair_context
from agent.authoring.validation import ValidationReport, average_ranks, evaluate_candidate, spearman, validate
from agent.authoring.validation_set import EdgeCaseName, ValidationSet, build_validation_set, load_validation_set
from agent.data.coco import AnnotationInfo, Dataset, load_coco
from agent.data.demo import generate_demo_dataset
from agent.metrics.contract import MetricSpec, list_builtin_metrics, load_metric_file, parse_metric_source
from sandbox.isolation import SandboxConfig

CONFIG = SandboxConfig(workers=2)

OBJECT_HEADER = '''"""A test metric."""

import math
import random
import time

import numpy as np

NAME = "{name}"
LEVEL = "object"
SUSPICIOUS = "low"
'''

IMAGE_HEADER = OBJECT_HEADER.replace('LEVEL = "object"', 'LEVEL = "image"')


def metric(tmp_path: Path, name: str, body: str, header: str = OBJECT_HEADER) -> MetricSpec:
    """A metric whose tracebacks name tmp_path/NAME.py, as a candidate's would name its file."""
    source = header.format(name=name) + "\n\n" + body.strip() + "\n"
    return parse_metric_source(source, path=str(tmp_path / f"{name}.py"))


AREA = """
def score(image, obj, scene):
    x, y, w, h = obj["bbox"]
    return w * h
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    root = tmp_path_factory.mktemp("demo")
    annotations = generate_demo_dataset(root / "demo", n_images=12, width=320, height=240)
    return load_coco(annotations), root / "demo" / "errors.json"


@pytest.fixture(scope="module")
def validation(demo: tuple[Dataset, Path], tmp_path_factory: pytest.TempPathFactory) -> ValidationSet:
    return build_validation_set(demo[0], tmp_path_factory.mktemp("validation") / "set")


# -- the validation set -----------------------------------------------------------------------------


def test_the_set_covers_every_class_and_holds_each_edge_case(validation: ValidationSet, demo: tuple) -> None:
    dataset = validation.dataset
    assert {a.category_id for a in dataset.annotations} == {c.id for c in demo[0].categories}
    assert sorted(set(validation.edge_cases.values())) == sorted(
        ["border_box", "edge_boxes_image", "empty_image", "grey_image", "partly_outside_box", "tiny_box"]
    )
    images = {image.id: image for image in dataset.images}
    boxes = {annotation.id: annotation for annotation in dataset.annotations}
    names = {name: key for key, name in validation.edge_cases.items()}

    def box(name: EdgeCaseName) -> AnnotationInfo:
        annotation_id = names[name][1]
        assert annotation_id is not None
        return boxes[annotation_id]

    empty = names["empty_image"][0]
    assert dataset.annotation_ids(empty) == []
    tiny = box("tiny_box")
    assert tuple(tiny.bbox[2:]) == (2.0, 2.0)
    assert box("border_box").bbox[0] == 0.0
    outside = box("partly_outside_box")
    x, _, w, _ = outside.bbox
    assert x < images[outside.image_id].width < x + w
    # The dataset layer keeps a box spilling over the border, with a warning: no clipping needed.
    assert [problem.severity for problem in dataset.warnings] == ["warning"]
    assert "extends past" in dataset.warnings[0].message

    grey_path = dataset.image_path(names["grey_image"][0])
    grey = cv2.imread(str(grey_path), cv2.IMREAD_COLOR)
    assert grey.shape[2] == 3 and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # The sandbox may read only the set's folder: every image is a real file in it, never a symlink.
    for image in dataset.images:
        path = dataset.image_path(image.id)
        assert path.is_file() and not path.is_symlink() and path.parent == dataset.image_root


def test_the_set_is_deterministic_and_reloads(demo: tuple, validation: ValidationSet, tmp_path: Path) -> None:
    again = build_validation_set(demo[0], tmp_path / "again")
    assert again.dataset.images == validation.dataset.images
    assert again.dataset.annotations == validation.dataset.annotations
    assert again.edge_cases == validation.edge_cases
    reloaded = load_validation_set(tmp_path / "again")
    assert reloaded.edge_cases == again.edge_cases
    with pytest.raises(FileExistsError):
        build_validation_set(demo[0], tmp_path / "again")


def test_sampling_stops_near_the_requested_size(demo: tuple, tmp_path: Path) -> None:
    small = build_validation_set(demo[0], tmp_path / "small", size=8)
    sampled = [image for image in small.dataset.images if (image.id, None) not in small.edge_cases]
    assert 2 <= len(sampled) < len(demo[0].images)
    assert {a.category_id for a in small.dataset.annotations} == {c.id for c in demo[0].categories}


def test_items_are_described_for_a_repair_prompt(validation: ValidationSet) -> None:
    tiny = next(key for key, name in validation.edge_cases.items() if name == "tiny_box")
    text = validation.describe(*tiny)
    assert text.startswith("the tiny 2×2 box at [")
    assert "in a 320×240 image" in text and "class " in text
    empty = next(key for key, name in validation.edge_cases.items() if name == "empty_image")
    assert validation.describe(*empty).startswith("the empty image (no annotations)")


# -- the checks, on real sandbox runs ---------------------------------------------------------------


def test_a_good_metric_passes_every_check(validation: ValidationSet, tmp_path: Path) -> None:
    report = validate(load_metric_file("builtin:box_tightness"), validation, CONFIG)
    assert report.passed, report.first_failure
    assert [(c.name, c.status) for c in report.checks] == [
        ("loads", "passed"),
        ("error_rate", "passed"),
        ("finite_outputs", "passed"),
        ("not_constant", "passed"),
        ("class_scope", "skipped"),  # the idea is about no one class
        ("deterministic", "passed"),
        ("time_budget", "passed"),
        ("not_duplicate", "skipped"),
    ]
    assert report.first_failure is None
    stats = report.stats
    assert stats.n_items == len(validation.dataset.annotations) == stats.n_scored + stats.n_none
    assert stats.min is not None and stats.min <= stats.q1 <= stats.median <= stats.q3 <= stats.max  # type: ignore[operator]
    assert stats.distinct > 10
    tiny = next(outcome for outcome in report.edge_cases if outcome.edge_case == "tiny_box")
    assert tiny.outcome == "none"  # box_tightness declines boxes under 4 px
    assert len(report.timing.runs_s) == 2 and report.timing.mean_item_s is not None
    # It goes to disk as JSON and comes back the same.
    path = tmp_path / "validation.json"
    path.write_text(report.model_dump_json(indent=2))
    assert ValidationReport.model_validate_json(path.read_text()) == report


def test_a_crash_on_tiny_boxes_fails_error_rate_and_names_the_tiny_box(
    validation: ValidationSet, tmp_path: Path
) -> None:
    body = """
def score(image, obj, scene):
    x, y, w, h = obj["bbox"]
    crop = image[int(y):int(y + h), int(x):int(x + w)]
    if crop.shape[0] < 3:
        raise ValueError(f"crop too small: {crop.shape}")
    return float(crop.mean())
"""
    spec = metric(tmp_path, "fragile", body)
    report = validate(spec, validation, CONFIG)
    assert not report.passed
    assert report.check("error_rate").status == "failed"
    assert "edge cases failed: tiny_box" in report.check("error_rate").detail
    failure = report.first_failure
    assert failure is not None and failure.check == "error_rate"
    assert failure.edge_case == "tiny_box" and failure.error_kind == "exception"
    assert failure.item is not None and failure.item.startswith("the tiny 2×2 box at [")
    assert failure.message == "ValueError: crop too small: (2, 2, 3)"
    line = spec.source.splitlines().index('        raise ValueError(f"crop too small: {crop.shape}")') + 1
    assert failure.traceback is not None and f'fragile.py", line {line}, in score' in failure.traceback
    assert "sandbox/worker.py" not in failure.traceback
    assert report.check("not_constant").passed  # the other checks still ran


def test_a_crash_on_the_empty_image_fails_an_image_metric(validation: ValidationSet, tmp_path: Path) -> None:
    body = """
def score(image, scene):
    return sum(a["area"] for a in scene["annotations"]) / len(scene["annotations"])
"""
    report = validate(metric(tmp_path, "mean_area", body, IMAGE_HEADER), validation, CONFIG)
    failure = report.first_failure
    assert failure is not None and failure.check == "error_rate" and failure.edge_case == "empty_image"
    assert failure.item is not None and failure.item.startswith("the empty image (no annotations)")
    assert "ZeroDivisionError" in failure.message
    assert {outcome.edge_case for outcome in report.edge_cases} == {"empty_image", "grey_image", "edge_boxes_image"}


def test_a_constant_metric_fails_not_constant(validation: ValidationSet, tmp_path: Path) -> None:
    report = validate(metric(tmp_path, "constant", "def score(image, obj, scene):\n    return 0.5"), validation, CONFIG)
    assert [c.name for c in report.checks if c.status == "failed"] == ["not_constant"]
    assert report.first_failure is not None and "got 0.5" in report.first_failure.message


def test_a_metric_crowded_at_its_suspicious_end_fails_not_constant(validation: ValidationSet, tmp_path: Path) -> None:
    # The newcomer's foliage metric: OpenCV hue runs 0-179, so `hue < 255` always holds, and nearly
    # every image scores about 1.0. Here as a box metric, suspicious when high, as that one was.
    body = """
def score(image, obj, scene):
    x, y, w, h = (int(v) for v in obj["bbox"])
    crop = image[max(y, 0) : y + max(h, 1), max(x, 0) : x + max(w, 1)]
    if crop.size == 0:
        return None
    hsv = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2HSV)
    share = float(np.mean((hsv[..., 0] < 255) & (hsv[..., 1] >= 0)))  # always 1.0
    return 0.5 if w % 7 == 0 else share - 1e-6 * (w % 3)  # a few boxes differ, the rest crowd at 1.0
"""
    crowded = metric(
        tmp_path, "foliage", body, OBJECT_HEADER.replace('"low"', '"high"').replace("import math", "import cv2")
    )
    report = validate(crowded, validation, CONFIG)
    assert [c.name for c in report.checks if c.status == "failed"] == ["not_constant"]
    message = report.first_failure.message if report.first_failure else ""
    assert "within 1% of the score range of the most suspicious value" in message and "0-179" in message
    # Read the other way round, the same scores crowd at the *unsuspicious* end, as a duplicate
    # detector's zeros do: the few that differ are what it flags, and that passes.
    calm = metric(tmp_path, "foliage_low", body, OBJECT_HEADER.replace("import math", "import cv2"))
    assert validate(calm, validation, CONFIG).check("not_constant").passed


def test_random_numbers_fail_determinism(validation: ValidationSet, tmp_path: Path) -> None:
    body = """
def score(image, obj, scene):
    return random.random()
"""
    report = validate(metric(tmp_path, "noisy", body), validation, CONFIG)
    assert [c.name for c in report.checks if c.status == "failed"] == ["deterministic"]
    failure = report.first_failure
    assert failure is not None and failure.item is not None and "changed on a second run" in failure.message


def test_a_slow_metric_fails_the_time_budget(validation: ValidationSet, tmp_path: Path) -> None:
    body = """
def score(image, obj, scene):
    time.sleep(0.02)
    x, y, w, h = obj["bbox"]
    return w * h
"""
    report = validate(metric(tmp_path, "slow", body), validation, CONFIG, time_budget_s=0.005)
    assert [c.name for c in report.checks if c.status == "failed"] == ["time_budget"]
    assert report.timing.mean_item_s is not None and report.timing.mean_item_s >= 0.02
    assert report.first_failure is not None and report.first_failure.message.startswith("too slow")


def test_a_metric_that_never_returns_stops_validation_at_its_first_timeout(
    validation: ValidationSet, tmp_path: Path
) -> None:
    # Every item of both runs took the whole limit: 12 minutes at the default 10 s before the model heard.
    body = """
def score(image, obj, scene):
    while True:
        pass
"""
    started = time.monotonic()
    report = validate(metric(tmp_path, "forever", body), validation, CONFIG.model_copy(update={"timeout_s": 1.0}))
    elapsed = time.monotonic() - started
    items = len(validation.dataset.annotations)
    assert elapsed < items * 1.0 / CONFIG.workers / 2, (elapsed, items)  # far from every item's second
    assert not report.passed
    assert [(c.name, c.status) for c in report.checks][:2] == [("loads", "passed"), ("error_rate", "skipped")]
    assert report.check("time_budget").status == "failed"
    assert [c.status for c in report.checks].count("skipped") == 6
    failure = report.first_failure
    assert failure is not None and failure.check == "time_budget" and failure.error_kind in ("timeout", "hard_timeout")
    assert failure.item is not None and "validation stopped there" in failure.message
    assert len(report.timing.runs_s) == 1 and report.timing.timeouts == 1
    context = repair_context(report, validation)
    assert context.check == "time_budget" and "ran past the 1 s limit" in context.message


def test_a_module_level_crash_fails_loads_and_skips_the_rest(validation: ValidationSet, tmp_path: Path) -> None:
    spec = metric(tmp_path, "broken", "LIMIT = math.sqrt(-1)\n\n" + AREA)
    report = validate(spec, validation, CONFIG)
    assert [c.status for c in report.checks] == ["failed"] + ["skipped"] * 7
    failure = report.first_failure
    assert failure is not None and failure.check == "loads" and failure.error_kind == "metric_load"
    assert failure.message == "ValueError: math domain error"
    assert failure.traceback is not None and "in <module>" in failure.traceback
    assert len(report.timing.runs_s) == 1  # no second run for a metric that does not load


def test_nan_outputs_are_reported(validation: ValidationSet, tmp_path: Path) -> None:
    first = min(key[1] for key in _plain_boxes(validation))
    body = f"""
def score(image, obj, scene):
    if obj["id"] == {first}:
        return float("nan")
    x, y, w, h = obj["bbox"]
    return w * h
"""
    report = validate(metric(tmp_path, "sometimes_nan", body), validation, CONFIG)
    assert report.check("error_rate").passed  # one item in ~50 is within the 5% allowed
    assert report.check("finite_outputs").status == "failed"
    assert report.stats.errors_by_kind == {"invalid_output": 1}
    failure = report.first_failure
    assert failure is not None and failure.check == "finite_outputs" and failure.annotation_id == first
    assert "nan" in failure.message


def _plain_boxes(validation: ValidationSet) -> list[tuple[int, int]]:
    return [
        (a.image_id, a.id) for a in validation.dataset.annotations if (a.image_id, a.id) not in validation.edge_cases
    ]


def test_a_copy_of_a_library_metric_is_flagged_as_a_duplicate(validation: ValidationSet, tmp_path: Path) -> None:
    source = load_metric_file("builtin:object_area_relative").source.replace(
        'NAME = "object_area_relative"', 'NAME = "relative_size"'
    )
    copy = parse_metric_source(source, path=str(tmp_path / "relative_size.py"))
    library = [load_metric_file("builtin:object_area_absolute"), load_metric_file("builtin:brightness")]
    report = validate(copy, validation, CONFIG, library=library)
    # Same-size images: relative area is absolute area over a constant. Image metrics are not compared.
    assert [c.metric for c in report.correlations] == ["object_area_absolute"]
    correlation = report.correlations[0]
    assert correlation.duplicate and correlation.rho == pytest.approx(1.0)
    assert report.check("not_duplicate").status == "failed"
    assert report.first_failure is not None
    assert report.first_failure.message.startswith("duplicates library metric object_area_absolute")
    # The library's scores are cached on the set: a second candidate does not rescore them.
    cached = dict(validation.library_scores)
    other = validate(load_metric_file("builtin:box_tightness"), validation, CONFIG, library=library)
    assert validation.library_scores == cached
    assert other.check("not_duplicate").passed


def test_a_feature_metric_validates(validation: ValidationSet) -> None:
    report = validate(load_metric_file("builtin:appearance_neighbours"), validation, CONFIG)
    assert report.output == "features"
    assert report.check("loads").passed and report.check("error_rate").passed
    assert report.check("deterministic").passed
    assert report.stats.n_items == len(validation.dataset.annotations)


# -- evaluation on the full dataset -----------------------------------------------------------------


def test_evaluate_candidate_gives_ap_per_error_type(demo: tuple[Dataset, Path]) -> None:
    dataset, errors = demo
    result = evaluate_candidate(load_metric_file("builtin:box_tightness"), dataset, errors, CONFIG)
    assert result.n_items == len(dataset.annotations) and result.n_failed == 0
    evaluation = result.evaluation
    assert evaluation.metric == "box_tightness" and evaluation.level == "object"
    assert evaluation.ap is not None and evaluation.image_ap is not None
    present = {record["type"] for record in json.loads(errors.read_text())["errors"]}
    assert set(evaluation.ap_by_type) == present
    assert result.random is not None and result.random.metric == "random"
    assert evaluation.ap > result.random.ap  # type: ignore[operator]


# -- Spearman ---------------------------------------------------------------------------------------


def test_average_ranks_share_ties() -> None:
    assert average_ranks([10.0, 20.0, 10.0, 30.0]).tolist() == [1.5, 3.0, 1.5, 4.0]


def test_spearman_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy is the reference for Spearman's rho")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 80))
        a = rng.integers(0, 6, n).astype(float)  # many ties
        b = a * rng.uniform(-1, 1) + rng.normal(0, 1, n)
        expected = stats.spearmanr(a, b).statistic
        ours = spearman(a, b)
        if np.isnan(expected):
            assert ours is None
        else:
            assert ours == pytest.approx(expected, abs=1e-12)


def test_spearman_is_none_when_undefined() -> None:
    assert spearman([1.0, 2.0], [2.0, 1.0]) is None
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert spearman([1.0, 2.0, 3.0], [30.0, 20.0, 10.0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


def test_what_a_failing_call_printed_reaches_the_repair_context(validation: ValidationSet) -> None:
    source = (
        '"""Prints, then fails on tiny boxes."""\n\nNAME = "chatty"\nLEVEL = "object"\nSUSPICIOUS = "low"\n\n\n'
        "def score(image, obj, scene):\n"
        '    print("looking at", obj["bbox"])\n'
        "    x, y, w, h = obj['bbox']\n"
        "    return 1.0 / (w - 2) + w\n"
    )
    report = validate(parse_metric_source(source, path="metric.py"), validation, SandboxConfig(workers=2))
    failure = report.first_failure
    assert failure is not None and failure.printed is not None
    assert failure.printed.startswith("looking at [")
    assert "printed by the metric" not in (failure.traceback or "") and "ZeroDivisionError" in failure.message
    assert repair_context(report, validation).stdout == failure.printed


def test_every_built_in_passes_not_constant(validation: ValidationSet) -> None:
    # The near-constant rule must not call the reference metrics useless: their crowds sit at the calm end.
    for spec in list_builtin_metrics():
        check = validate(spec, validation, CONFIG).check("not_constant")
        assert check.passed, f"{spec.name}: {check.detail}"


def test_an_idea_about_one_class_s_boxes_must_score_only_that_class() -> None:
    from agent.authoring.prompting import idea_class_scope

    classes = ["panda", "bear", "fox"]
    assert idea_class_scope("fox boxes that are not mostly orange", classes) == "fox"
    assert idea_class_scope("Bear labels drawn too loosely", classes) == "bear"
    assert idea_class_scope("boxes that are not on a panda", classes) is None  # about every box
    assert idea_class_scope("panda and fox boxes", classes) is None
    assert idea_class_scope("tiny boxes", classes) is None


def test_scoring_every_box_for_a_one_class_idea_fails_class_scope(validation: ValidationSet, tmp_path: Path) -> None:
    every = metric(tmp_path, "every_box", AREA)
    report = validate(every, validation, CONFIG, scope="fox")
    assert [c.name for c in report.checks if c.status == "failed"] == ["class_scope"]
    failure = report.first_failure
    assert failure is not None and 'return None when obj["category"] != "fox"' in failure.message
    assert failure.annotation_id is not None and "class fox" not in (failure.item or "")  # a box of another class
    only_foxes = AREA.replace(
        "def score(image, obj, scene):\n",
        'def score(image, obj, scene):\n    if obj["category"] != "fox":\n        return None\n',
        1,
    )
    assert (
        validate(metric(tmp_path, "fox_only", only_foxes), validation, CONFIG, scope="fox").check("class_scope").passed
    )
    assert report.check("class_scope").status == "failed"
    assert validate(every, validation, CONFIG).check("class_scope").status == "skipped"
