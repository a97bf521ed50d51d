"""`metricsmith triage`: the queue's learning and reasons (pure), and the command with every file export."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli.main import main
from agent.data.coco import AnnotationInfo, CategoryInfo, Dataset, ImageInfo, load_coco
from agent.data.demo import generate_demo_dataset
from agent.evaluation.ranking import ErrorLabel, MetricScores, ground_truth
from agent.evaluation.triage import TrainingCopy, load_jsonl, rank_boxes, triage_from_scores, worst_shares
from agent.metrics.learned import fold_of

# -- pure ------------------------------------------------------------------------------------------


def _dataset(images: int = 60, per_image: int = 4) -> Dataset:
    categories = (CategoryInfo(id=1, name="bear"), CategoryInfo(id=2, name="fox"))
    image_rows = tuple(ImageInfo(id=i, file_name=f"{i}.jpg", width=100, height=50) for i in range(1, images + 1))
    annotations = tuple(
        AnnotationInfo(
            id=(i - 1) * per_image + k + 1, image_id=i, category_id=1 + k % 2, bbox=[10, 5, 20, 10], area=200
        )
        for i in range(1, images + 1)
        for k in range(per_image)
    )
    return Dataset(Path("/nonexistent/a.json"), Path("/nonexistent"), image_rows, categories, annotations)


def _metrics(dataset: Dataset, dirty: set[int], seed: int) -> list[MetricScores]:
    """Two noisy metrics that each see the dirty boxes a little, and one that sees nothing."""
    rng = np.random.default_rng(seed)
    ids = [a.id for a in dataset.annotations]
    first = {i: float(rng.normal()) + (1.5 if i in dirty else 0.0) for i in ids}
    second = {i: float(rng.normal()) - (1.5 if i in dirty else 0.0) for i in ids}
    noise = {i: float(rng.normal()) for i in ids}
    return [
        MetricScores("tightness", "object", "high", first),
        MetricScores("overlap", "object", "low", second),
        MetricScores("noise", "object", "high", noise),
    ]


def _copy(dataset: Dataset, seed: int, share: float = 0.2) -> TrainingCopy:
    rng = np.random.default_rng(100 + seed)
    ids = [a.id for a in dataset.annotations]
    dirty = set(rng.choice(ids, size=int(share * len(ids)), replace=False).tolist())
    image = {a.id: a.image_id for a in dataset.annotations}
    errors = [ErrorLabel(type="shift" if i % 2 else "swap", image_id=image[i], annotation_id=i) for i in dirty]
    return TrainingCopy(_metrics(dataset, dirty, seed), ground_truth(dataset, errors))


def test_learned_on_injected_copies_the_queue_puts_real_errors_first() -> None:
    dataset = _dataset()
    real = {a.id for a in dataset.annotations if a.id % 5 == 0}
    result = triage_from_scores(dataset, _metrics(dataset, real, 7), [_copy(dataset, s) for s in range(3)])
    assert result.method == "injected"
    top = [item.annotation_id for item in result.boxes[: len(real)]]
    assert len(set(top) & real) / len(real) > 0.6  # prevalence is 0.2
    assert [item.rank for item in result.boxes] == list(range(1, len(result.boxes) + 1))
    assert all(a.suspicion >= b.suspicion for a, b in zip(result.boxes, result.boxes[1:], strict=False))
    # The reasons name the metrics that see the errors, not the one that sees nothing, for the top boxes.
    named = Counter(reason.metric for item in result.boxes[:10] for reason in item.reasons)
    assert named["noise"] < named["tightness"] + named["overlap"]


def test_an_original_box_is_scored_by_no_model_that_saw_its_image() -> None:
    dataset = _dataset()
    real = {a.id for a in dataset.annotations if a.id % 5 == 0}
    metrics = _metrics(dataset, real, 7)
    copies = [_copy(dataset, s) for s in range(2)]
    truth = ground_truth(dataset)
    _, before, _, _ = rank_boxes(truth, metrics, copies)
    folds = fold_of([image.id for image in dataset.images])
    in_fold_0 = {image_id for image_id, fold in folds.items() if fold == 0}
    # Relabel every copy box of fold 0's images: the models that score fold 0 never trained on them.
    changed = []
    for copy in copies:
        flipped = [
            ErrorLabel(type="shift", image_id=image_id, annotation_id=annotation_id)
            for annotation_id, image_id in copy.truth.annotation_image.items()
            if image_id in in_fold_0
        ]
        kept = [e for e in copy.truth.errors if e.image_id not in in_fold_0]
        changed.append(TrainingCopy(copy.metrics, ground_truth(dataset, [*kept, *flipped])))
    _, after, _, _ = rank_boxes(truth, metrics, changed)
    image = truth.annotation_image
    assert all(before[key] == pytest.approx(after[key]) for key in before if image[key] in in_fold_0)
    assert any(before[key] != pytest.approx(after[key]) for key in before if image[key] not in in_fold_0)


def test_one_metric_falls_back_on_rank_average_and_says_so() -> None:
    dataset = _dataset(images=10)
    metrics = _metrics(dataset, set(), 0)[:1]
    result = triage_from_scores(dataset, metrics, [_copy(dataset, 0)])
    assert result.method == "rank_average"
    assert any("rank_average" in note for note in result.notes)
    assert all(item.likely_error is None for item in result.boxes)


def test_known_errors_give_figures_at_the_budget() -> None:
    dataset = _dataset()
    real = {a.id for a in dataset.annotations if a.id % 5 == 0}
    image = {a.id: a.image_id for a in dataset.annotations}
    errors = [ErrorLabel(type="shift", image_id=image[i], annotation_id=i) for i in real]
    result = triage_from_scores(dataset, _metrics(dataset, real, 3), known_errors=errors, budget=0.1)
    assert result.method == "known_errors" and result.figures is not None
    assert result.figures.reviewed == 24
    assert result.figures.random_precision == pytest.approx(0.2)
    assert result.figures.precision_at_budget > 0.4
    top = result.boxes[: result.figures.reviewed]
    assert result.figures.precision_at_budget == pytest.approx(sum(i.annotation_id in real for i in top) / 24)


def test_worst_share_is_within_the_class() -> None:
    scores = {1: 5.0, 2: 1.0, 3: 0.0, 4: 9.0, 5: None}
    groups = {1: "bear", 2: "bear", 3: "fox", 4: "fox", 5: "fox"}
    shares = worst_shares(scores, "high", groups)
    assert shares == {1: 0.5, 2: 1.0, 3: 1.0, 4: 0.5}
    assert worst_shares(scores, "low", groups)[3] == 0.5


# -- the command and its files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("triage")
    annotations = generate_demo_dataset(root / "demo", n_images=40, seed=2, workers=1)
    digest = hashlib.sha256(annotations.read_bytes()).hexdigest()
    out = root / "out"
    code = main(["triage", "--annotations", str(annotations), "--out", str(out), "--workers", "1",
                 "--export", "cvat,coco,splits", "--drop-top", "10", "--flag-share", "0.1",
                 "--split-metric", "triage", "--split-metric", "box_tightness"])  # fmt: skip
    return {"annotations": annotations, "digest": digest, "out": out, "code": code, "root": root}


def test_the_command_writes_a_queue_of_every_box_and_image(run: dict[str, Any]) -> None:
    assert run["code"] == 0
    items = load_jsonl(run["out"] / "triage.jsonl")
    dataset = load_coco(run["annotations"])
    boxes = [i for i in items if i.level == "object"]
    images = [i for i in items if i.level == "image"]
    assert sorted(i.annotation_id for i in boxes) == sorted(a.id for a in dataset.annotations)
    assert sorted(i.image_id for i in images) == sorted(image.id for image in dataset.images)
    assert {i.method for i in items} == {"injected"}
    assert all(i.reasons for i in boxes) and all(i.likely_error for i in boxes)
    assert hashlib.sha256(run["annotations"].read_bytes()).hexdigest() == run["digest"]  # never written


def test_cvat_file_loads_in_pycocotools_with_the_triage_as_attributes(run: dict[str, Any]) -> None:
    coco_module = pytest.importorskip("pycocotools.coco", reason="pycocotools is in the test extra")
    coco = coco_module.COCO(str(run["out"] / "cvat" / "annotations.json"))
    items = load_jsonl(run["out"] / "triage.jsonl")
    flagged = [i.image_id for i in items if i.level == "image"][:4]  # 10% of 40 images
    assert sorted(coco.getImgIds()) == sorted(flagged)
    suspicion = {i.annotation_id: i for i in items if i.level == "object"}
    dataset = load_coco(run["annotations"])
    assert len(coco.getAnnIds()) == sum(a.image_id in flagged for a in dataset.annotations)
    for annotation in coco.loadAnns(coco.getAnnIds()):
        attributes = annotation["attributes"]
        item = suspicion[annotation["id"]]
        assert attributes["suspicion"] == pytest.approx(item.suspicion, abs=1e-6)
        assert attributes["triage_rank"] == item.rank
        assert attributes["reasons"] == "; ".join(r.text for r in item.reasons)
        assert attributes["occluded"] is False and annotation["segmentation"] == []


def test_cleaned_coco_lacks_exactly_the_top_boxes_and_loads_everywhere(run: dict[str, Any]) -> None:
    coco_module = pytest.importorskip("pycocotools.coco", reason="pycocotools is in the test extra")
    cleaned = run["out"] / "coco" / "annotations.json"
    coco = coco_module.COCO(str(cleaned))
    items = [i for i in load_jsonl(run["out"] / "triage.jsonl") if i.level == "object"]
    top = {i.annotation_id for i in items[:10]}
    original = load_coco(run["annotations"])
    assert set(coco.getAnnIds()) == {a.id for a in original.annotations} - top
    assert len(load_coco(cleaned, original.image_root).annotations) == len(original.annotations) - 10
    removed = json.loads((run["out"] / "coco" / "removed.json").read_text())
    assert {box["annotation_id"] for box in removed["boxes"]} == top
    assert all(box["reasons"] for box in removed["boxes"])


def test_splits_cover_every_image_once_and_keep_the_class_mix(run: dict[str, Any]) -> None:
    coco_module = pytest.importorskip("pycocotools.coco", reason="pycocotools is in the test extra")
    original = load_coco(run["annotations"])
    seen: list[int] = []
    sizes = {}
    for name in ("train", "val", "test"):
        path = run["out"] / "splits" / f"{name}.json"
        coco = coco_module.COCO(str(path))
        seen.extend(coco.getImgIds())
        sizes[name] = len(coco.getImgIds())
        assert len(load_coco(path, original.image_root).images) == sizes[name]
    assert sorted(seen) == sorted(image.id for image in original.images)
    assert sizes == {"train": 32, "val": 4, "test": 4}


def test_bad_input_is_one_line_and_exit_2(run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    annotations = str(run["annotations"])
    cases = [
        ["--annotations", annotations, "--out", str(run["root"] / "x"), "--export", "labelstudio"],
        ["--annotations", annotations, "--out", str(run["root"] / "y"), "--export", "coco"],
        ["--annotations", annotations, "--out", str(run["root"] / "demo")],
        ["--annotations", str(run["root"] / "missing.json"), "--out", str(run["root"] / "z")],
    ]
    for case in cases:
        capsys.readouterr()
        assert main(["triage", *case]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")


def test_options_that_would_be_ignored_or_mix_rows_are_refused(
    run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    annotations, root = str(run["annotations"]), run["root"]
    scores = root / "brightness.jsonl"
    assert main(["score", "--annotations", annotations, "--metric", "builtin:brightness", "--out", str(scores),
                 "--workers", "1"]) == 0  # fmt: skip
    learned = ["--learn", "rank-average"]
    cases = [
        (["--drop-top", "3"], "--drop-top goes with --export coco (the cleaned copy), which is not asked for"),
        (["--drop-images"], "--drop-images goes with --export coco"),
        (["--export", "coco", "--drop-top", "40000"], "--drop-top 40000 would drop every one of the"),
        (["--flag-share", "0"], "--flag-share must be above 0 and at most 1, got 0.0"),
        (["--budget", "1.5"], "--budget must be above 0 and at most 1, got 1.5"),
        (["--export", "fiftyX"], "the exports are label-studio, cvat, coco, splits"),
        ([*learned, "--scores", str(scores), "--scores", str(scores)], f"--scores {scores} is given twice"),
        ([*learned, "--scores", str(scores), "--metric", "builtin:brightness"], "metric brightness is read from"),
    ]
    for index, (extra, message) in enumerate(cases):
        capsys.readouterr()
        assert main(["triage", "--annotations", annotations, "--out", str(root / f"refused-{index}"), *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, lines)
        assert not (root / f"refused-{index}").exists()


def test_a_rerun_into_an_earlier_runs_folder_removes_the_exports_it_does_not_write(tmp_path: Path) -> None:
    from agent.evaluation.exports.writer import remove_stale_exports

    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "annotations.json").write_text("{}")
    (tmp_path / "splits").mkdir()
    assert remove_stale_exports(tmp_path, ["coco"]) == [], "not an earlier triage run's folder: nothing removed"
    (tmp_path / "triage.jsonl").write_text("")
    assert remove_stale_exports(tmp_path, ["splits"]) == [tmp_path / "coco"]
    assert not (tmp_path / "coco").exists() and (tmp_path / "splits").is_dir()


def test_the_report_shows_the_top_of_the_queue_with_reasons(run: dict[str, Any]) -> None:
    scores = run["root"] / "scores.jsonl"
    annotations = str(run["annotations"])
    assert main(["score", "--annotations", annotations, "--metric", "builtin:box_tightness", "--out", str(scores),
                 "--workers", "1"]) == 0  # fmt: skip
    page = run["root"] / "report.html"
    assert main(["report", "--annotations", annotations, "--scores", str(scores), "--top", "3",
                 "--triage", str(run["out"] / "triage.jsonl"), "--out", str(page)]) == 0  # fmt: skip
    html = page.read_text()
    section = html[html.index('<section id="triage">') : html.index("</section>", html.index('<section id="triage">'))]
    top = [i for i in load_jsonl(run["out"] / "triage.jsonl") if i.level == "object"][:6]
    assert section.count('<figure class="tile triage"') == 6 and section.count("data:image/jpeg;base64,") == 6
    for item in top:
        assert f'data-annotation-id="{item.annotation_id}"' in section
        assert item.reasons[0].text in section


def test_score_files_and_known_errors_learn_from_the_errors_and_measure_the_queue(
    run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    scores = run["root"] / "two.jsonl"
    annotations = str(run["annotations"])
    assert main(["score", "--annotations", annotations, "--metric", "builtin:box_tightness", "--metric",
                 "builtin:object_proximity", "--out", str(scores), "--workers", "1"]) == 0  # fmt: skip
    out = run["root"] / "known"
    capsys.readouterr()
    errors = str(run["annotations"].parent / "errors.json")
    assert main(["triage", "--annotations", annotations, "--scores", str(scores), "--errors", errors,
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "known_errors"
    assert summary["metrics"] == ["box_tightness", "object_proximity"]
    figures = summary["figures"]
    assert f"precision {figures['precision_at_budget']:.3f} in the top {figures['reviewed']} boxes" in printed
    assert figures["precision_at_budget"] > figures["random_precision"]


def test_unreadable_images_are_said_since_their_boxes_have_no_scores(tmp_path: Path) -> None:
    annotations = generate_demo_dataset(tmp_path / "demo", n_images=8, seed=3, workers=1)
    image = json.loads(annotations.read_text())["images"][2]
    next(annotations.parent.rglob(image["file_name"])).write_bytes(b"not an image")
    code = main(["triage", "--annotations", str(annotations), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--learn", "rank-average", "--metric", "builtin:box_tightness",
                 "--metric", "builtin:object_area_relative"])  # fmt: skip
    assert code == 0
    notes = json.loads((tmp_path / "out" / "summary.json").read_text())["notes"]
    assert any(
        note.startswith("1 of 8 images could not be read") and f"({image['file_name']})" in note for note in notes
    ), notes


def test_label_studio_tasks_quote_the_file_name_into_the_url(tmp_path: Path) -> None:
    # Unquoted, `&` or `#` in a name ended Label Studio's ?d= value early, and `<`/`>` went into the page as they were.
    from types import SimpleNamespace

    from agent.data.coco import coco_from_document
    from agent.evaluation.exports.label_studio import tasks

    name = "a b&c#d?<img src=x onerror=alert(1)>.jpg"
    document = {"images": [{"id": 1, "file_name": f"sub/{name}", "width": 8, "height": 8}], "annotations": [],
                "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    dataset = coco_from_document(document, tmp_path / "annotations.json", tmp_path)
    item = SimpleNamespace(image_id=1, boxes=[], rank=1, suspicion=0.5)
    (task,) = tasks(dataset, SimpleNamespace(images=[item], boxes=[]))  # type: ignore[arg-type]
    assert (
        task["data"]["image"]
        == "/data/local-files/?d=sub/a%20b%26c%23d%3F%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.jpg"
    )
    assert task["data"]["file_name"] == f"sub/{name}"


@pytest.mark.parametrize("change", ["category", "file_name", "empty"])
def test_a_triage_file_of_another_dataset_is_refused_by_the_report(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    # Ids alone match across datasets: the report showed another dataset's boxes as this one's.
    items = (run["out"] / "triage.jsonl").read_text().splitlines()
    first = json.loads(items[0])
    if change == "category":
        first["category"] = "zebra"
    elif change == "file_name":
        first["file_name"] = "elsewhere.jpg"
    other = tmp_path / "triage.jsonl"
    other.write_text("" if change == "empty" else "\n".join([json.dumps(first), *items[1:]]) + "\n")
    capsys.readouterr()
    code = main(["report", "--annotations", str(run["annotations"]), "--metric", "builtin:brightness",
                 "--triage", str(other), "--out", str(tmp_path / "r.html"), "--workers", "1"])  # fmt: skip
    assert code == 2 and not (tmp_path / "r.html").exists()
    error = capsys.readouterr().err
    expected = {"category": "a zebra there, a ", "file_name": "on elsewhere.jpg there", "empty": "the file is empty"}
    assert expected[change] in error, error
