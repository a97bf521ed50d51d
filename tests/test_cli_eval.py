"""`metricsmith eval` driven as a real command on small hand-written files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def write_annotations(root: Path) -> Path:
    """Four images (no pixels needed for --scores) with two boxes each: ids 10*i and 10*i + 1."""
    root.mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in range(1, 5)]
    annotations = [
        {"id": 10 * i + k, "image_id": i, "category_id": 1, "bbox": [2 + 20 * k, 2, 10, 10], "area": 100.0}
        for i in range(1, 5)
        for k in range(2)
    ]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    return path


def _record(kind: str, image_id: int, annotation_id: int | None) -> dict[str, object]:
    box = [2.0, 2.0, 10.0, 10.0]
    return {
        "type": kind,
        "image_id": image_id,
        "annotation_id": annotation_id,
        "clean_annotation_id": None if kind == "spurious" else 100 + image_id,
        "category_id": 1,
        "original_category_id": None if kind == "spurious" else 1,
        "bbox": None if kind == "drop" else box,
        "original_bbox": None if kind == "spurious" else box,
    }


def write_errors(root: Path, records: list[dict[str, object]]) -> Path:
    path = root / "errors.json"
    path.write_text(json.dumps({"version": 1, "seed": None, "error_rate": 0.2, "errors": records}))
    return path


def write_scores(path: Path, rows: list[tuple[str, str, int, int | None, float | None]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "level", "image_id", "annotation_id", "score", "error_kind", "error"])
        for metric, level, image_id, annotation_id, score in rows:
            writer.writerow([metric, level, image_id, "" if annotation_id is None else annotation_id,
                             "" if score is None else score, "", ""])  # fmt: skip
    return path


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    annotations = write_annotations(tmp_path / "data")
    errors = write_errors(
        tmp_path / "data", [_record("shift", 1, 11), _record("duplicate", 2, 21), _record("drop", 3, None)]
    )
    # An object metric that puts both dirty boxes first, and an image metric by hand.
    box_scores = {11: 0.9, 21: 0.8, 10: 0.1, 20: 0.2, 30: 0.3, 31: 0.3, 40: 0.0, 41: None}
    rows: list[tuple[str, str, int, int | None, float | None]] = [
        ("my_boxes", "object", key // 10, key, score) for key, score in box_scores.items()
    ]
    rows += [("brightness", "image", i, None, score) for i, score in ((1, 0.1), (2, 0.5), (3, 0.2), (4, 0.9))]
    return annotations, errors, write_scores(tmp_path / "scores.csv", rows)


def test_json_report_from_a_scores_file(files: tuple[Path, Path, Path]) -> None:
    annotations, errors, scores = files
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(errors), "--scores", str(scores),
                     "--direction", "my_boxes=high", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"items", "prevalence", "budget", "metrics"}
    assert report["items"] == {
        "annotations": 8, "images": 4, "errors": 3, "errors_by_type": {"shift": 1, "duplicate": 1, "drop": 1},
    }  # fmt: skip
    by_name = {(row["metric"], row["level"]): row for row in report["metrics"]}
    assert set(by_name) == {
        ("my_boxes", "object"), ("brightness", "image"), ("random", "object"), ("random", "image"),
        ("combined", "object"), ("rank_average", "object"),
    }  # fmt: skip
    boxes = by_name["my_boxes", "object"]
    assert boxes["ap"] == 1.0 and boxes["auroc"] == 1.0 and boxes["ap_by_type"]["drop"] is None
    # The built-in brightness metric is "low": dark images 1 and 3 are dirty, image 2 (0.5) is too.
    brightness = by_name["brightness", "image"]
    assert brightness["direction"] == "low" and brightness["ap"] == 1.0
    assert by_name["random", "object"]["ap"] == pytest.approx(2 / 8)


def test_table_output(files: tuple[Path, Path, Path]) -> None:
    annotations, errors, scores = files
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(errors), "--scores", str(scores),
                     "--direction", "my_boxes=high")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for word in ("my_boxes", "brightness", "random", "combined", "rank_average", "AUROC", "shift", "img AP"):
        assert word in result.stdout


def test_unknown_direction_is_a_usage_error(files: tuple[Path, Path, Path]) -> None:
    annotations, errors, scores = files
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(errors), "--scores", str(scores))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown SUSPICIOUS direction of metric my_boxes; pass --direction my_boxes=high|low"
    ]


def test_mismatched_files_exit_2_in_one_line(tmp_path: Path, files: tuple[Path, Path, Path]) -> None:
    annotations, _, scores = files
    errors = write_errors(tmp_path, [_record("shift", 1, 11), _record("loose", 2, 999), _record("swap", 9, 91)])
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(errors), "--scores", str(scores),
                     "--direction", "my_boxes=high")  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "annotation_id 999, not in annotations.json" in lines[0] and "2 mismatched ids" in lines[0]

    bad_scores = write_scores(tmp_path / "other.csv", [("my_boxes", "object", 1, 77, 0.5)])
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(files[1]), "--scores",
                     str(bad_scores), "--direction", "my_boxes=high")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad_scores}: row 1 has annotation_id 77, not in annotations.json "
        "(1 mismatched ids in all; are these files of the same dataset?)"
    ]


def test_needs_metric_or_scores(files: tuple[Path, Path, Path]) -> None:
    annotations, errors, _ = files
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(errors))
    assert result.returncode == 2 and "--metric" in result.stderr
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(errors), "--direction", "x=up",
                     "--scores", "s.csv")  # fmt: skip
    assert result.returncode == 2 and "NAME=high" in result.stderr


@pytest.mark.slow
def test_builtin_metric_on_a_demo_dataset(tmp_path: Path) -> None:
    from agent.demo_data import generate_demo_dataset

    annotations = generate_demo_dataset(tmp_path / "demo", n_images=8)
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(annotations.parent / "errors.json"),
                     "--metric", "builtin:annotation_duplicates", "--workers", "2", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = [row["metric"] for row in report["metrics"]]
    assert names == ["annotation_duplicates", "random"]
    duplicates = report["metrics"][0]
    assert duplicates["level"] == "object" and duplicates["direction"] == "high"
    assert duplicates["n_items"] == report["items"]["annotations"]
