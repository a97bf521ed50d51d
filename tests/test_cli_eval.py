"""`metricsmith eval` driven as a real command on small hand-written files."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_score import BOX_AREA, make_dataset


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
    """A score file as metricsmith wrote them before rows recorded their metric: no direction, no sha256."""
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


def test_failed_calls_are_said_beside_the_figures(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    # An item whose call failed ranks last in every figure: eval says so on stderr, the JSON stays one document.
    annotations, errors, _ = files
    scores = tmp_path / "failed.csv"
    with scores.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "level", "image_id", "annotation_id", "score", "error_kind", "error"])
        for key in (10, 11, 20, 21, 30, 31):
            failed = key == 30
            writer.writerow(["my_boxes", "object", key // 10, key, "" if failed else key / 100,
                             "exception" if failed else "", "ValueError: no crown here" if failed else ""])  # fmt: skip
        for key in (40, 41):
            writer.writerow(["my_boxes", "object", 4, key, "", "image_unreadable", "cannot decode 4.png"])
    result = run_cli("eval", "--annotations", str(annotations), "--errors", str(errors), "--scores", str(scores),
                     "--direction", "my_boxes=high", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: 1 of 4 images could not be read, so no metric scored their items (first: image 4 (4.png): cannot "
        "decode 4.png); those items rank as least suspicious in every figure",
        "note: my_boxes: 1 call failed (1 exception; first: exception on image 3 (3.png): ValueError: no crown "
        "here); those items count as least suspicious by it",
    ]


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
    from agent.data.demo import generate_demo_dataset

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


# -- score files that record their metrics --------------------------------------------------------


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """box_area (not a built-in; SUSPICIOUS low) scored by `metricsmith score` into each format.

    make_dataset gives every image a 100 px box (10*i) and a 600 px one (10*i + 1); the errors are
    on boxes 11 and 21, both large. So "low" ranks them last (AP 2/8) and "high" first, tied with
    the two other large boxes (AP 2/4).
    """
    root = tmp_path_factory.mktemp("scored")
    annotations = make_dataset(root / "data")
    errors = write_errors(root / "data", [_record("shift", 1, 11), _record("duplicate", 2, 21)])
    metric = root / "box_area.py"
    metric.write_text(BOX_AREA)
    files = {"annotations": annotations, "errors": errors, "metric": metric}
    for suffix in ("csv", "jsonl", "parquet"):
        if suffix == "parquet" and importlib.util.find_spec("pyarrow") is None:
            continue
        out = root / f"scores.{suffix}"
        result = run_cli("score", "--annotations", str(annotations), "--metric", str(metric), "--out", str(out),
                         "--workers", "2")  # fmt: skip
        assert result.returncode == 0, result.stderr
        files[suffix] = out
    return files


def _eval(scored: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    return run_cli("eval", "--annotations", str(scored["annotations"]), "--errors", str(scored["errors"]), *args)


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_direction_comes_from_the_score_file_and_direction_overrides_it(scored: dict[str, Path], suffix: str) -> None:
    if suffix not in scored:
        pytest.skip("pyarrow is needed for .parquet")
    result = _eval(scored, "--scores", str(scored[suffix]), "--json")
    assert result.returncode == 0, result.stderr
    box_area = json.loads(result.stdout)["metrics"][0]
    assert (box_area["metric"], box_area["direction"], box_area["ap"]) == ("box_area", "low", pytest.approx(2 / 8))
    result = _eval(scored, "--scores", str(scored[suffix]), "--direction", "box_area=high", "--json")
    assert result.returncode == 0, result.stderr
    box_area = json.loads(result.stdout)["metrics"][0]
    assert (box_area["direction"], box_area["ap"]) == ("high", pytest.approx(2 / 4))


def _rewritten(source: Path, target: Path, **changes: str) -> Path:
    """`source`'s rows with some recorded fields changed, as another run (or a hand edit) would leave them."""
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row | changes for row in rows)
    return target


def test_two_files_disagreeing_about_a_metric_are_refused_in_one_line(scored: dict[str, Path], tmp_path: Path) -> None:
    high = _rewritten(scored["csv"], tmp_path / "high.csv", suspicious="high")
    result = _eval(scored, "--scores", str(scored["csv"]), "--scores", str(high))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: metric box_area: {scored['csv']} has SUSPICIOUS low but {high} has high; "
        "these are two different metrics under one name: evaluate them separately"
    ]
    # The same rows once more with the same record merge (as parts of one dataset would); only the
    # duplicated items are refused then, by the ranking.
    again = _rewritten(scored["csv"], tmp_path / "again.csv")
    result = _eval(scored, "--scores", str(scored["csv"]), "--scores", str(again))
    assert result.returncode == 2 and "two rows for object 10" in result.stderr
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(scored["csv"].read_text() + "".join(high.read_text().splitlines(keepends=True)[1:]))
    result = _eval(scored, "--scores", str(mixed))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {mixed}: metric box_area has rows with SUSPICIOUS low and rows with high; "
        "a score file must hold one version of each metric"
    ]


def test_a_metric_read_and_given_again_with_metric_is_refused_before_scoring(
    scored: dict[str, Path], tmp_path: Path
) -> None:
    sha256 = hashlib.sha256(BOX_AREA.encode()).hexdigest()
    metric = scored["metric"]
    result = _eval(scored, "--scores", str(scored["csv"]), "--metric", str(metric))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: metric box_area is read from {scored['csv']} and would be scored again with --metric {metric} "
        f"(the same code, sha256 {sha256[:12]}); drop one of the two"
    ]
    edited = tmp_path / "box_area.py"
    edited.write_text(BOX_AREA.replace("w * h", "w + h"))
    edited_sha256 = hashlib.sha256(edited.read_bytes()).hexdigest()
    result = _eval(scored, "--scores", str(scored["csv"]), "--metric", str(edited))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: metric box_area: {scored['csv']} holds scores of other code (sha256 {sha256[:12]} from file:{metric}) "
        f"than --metric {edited} (sha256 {edited_sha256[:12]}); evaluate them separately"
    ]


def test_bad_recorded_fields_and_unknown_overrides_are_one_line(scored: dict[str, Path], tmp_path: Path) -> None:
    sideways = _rewritten(scored["csv"], tmp_path / "sideways.csv", suspicious="sideways")
    result = _eval(scored, "--scores", str(sideways))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {sideways}: row 1: suspicious: Input should be 'high' or 'low'"
    ]
    result = _eval(scored, "--scores", str(scored["csv"]), "--direction", "box_aera=high")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --direction box_aera=high: no metric box_aera to evaluate (box_area)"
    ]


@pytest.mark.parametrize("content", [None, b"", b"a,b\n"])
def test_a_score_file_with_no_rows_is_refused_not_measured(
    tmp_path: Path, content: bytes | None, capsys: pytest.CaptureFixture[str]
) -> None:
    # An empty table came out with exit 0, as if nothing had been measured on purpose.
    from agent.cli.main import main

    annotations, errors = tmp_path / "annotations.json", tmp_path / "errors.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}],
                                       "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))  # fmt: skip
    errors.write_text(json.dumps({"seed": 0, "error_rate": 0.0, "errors": []}))
    scores = tmp_path / "scores"
    if content is None:
        scores.mkdir()
    else:
        scores = tmp_path / "scores.csv"
        scores.write_bytes(content)
    code = main(["eval", "--annotations", str(annotations), "--errors", str(errors), "--scores", str(scores)])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith(f"--scores {scores}: holds no score rows")


def test_a_score_file_named_like_no_score_file_is_refused_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli.main import main

    scores = tmp_path / "x.json"
    scores.write_text("{}")
    code = main(["eval", "--annotations", str(tmp_path / "a.json"), "--errors", str(tmp_path / "e.json"),
                 "--scores", str(scores)])  # fmt: skip
    assert code == 2
    assert (
        f"{scores}: not a score file by its name; score files are .csv, .jsonl or .parquet" in capsys.readouterr().err
    )
