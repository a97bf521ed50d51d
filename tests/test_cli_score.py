"""`metricsmith score` driven as a real command, on real files, through the real sandbox."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from process_helpers import ctrl_c_once_a_child_starts, start_as_from_a_terminal

from agent.metrics.contract import load_metric_file
from agent.metrics.results import json_line
from agent.metrics.scoring import ScoreRow

BRIGHTNESS = '''"""Mean brightness of the image."""
NAME = "mean_brightness"
LEVEL = "image"
SUSPICIOUS = "low"


def score(image, scene):
    return float(image.mean() / 255.0)
'''

BOX_AREA = '''"""Box area in pixels."""
NAME = "box_area"
LEVEL = "object"
SUSPICIOUS = "low"


def score(image, obj, scene):
    x, y, w, h = obj["bbox"]
    return w * h
'''

HALF_FAILING = '''"""Fails on every box with an odd annotation id, after printing a line."""
NAME = "half_failing"
LEVEL = "object"
SUSPICIOUS = "low"


def score(image, obj, scene):
    if obj["id"] % 2:
        print("about to divide by zero")
        return 1 / 0
    return 1.0
'''

# Images 1 and 2 score; every other call blocks far longer than any test runs. So when SIGINT arrives
# the two rows are in, and nothing else can be, however fast or loaded the machine is. The 0.15 s
# sleep outlasts the worker's 0.1 s flush interval, so each of the two rows leaves the worker as soon
# as it is scored instead of waiting behind the blocked call.
STUCK_AFTER_TWO = '''"""Scores images 1 and 2, then blocks: a run that can only end by being interrupted."""
import time

NAME = "stuck_after_two"
LEVEL = "image"
SUSPICIOUS = "low"


def score(image, scene):
    time.sleep(0.15 if scene["image"]["id"] <= 2 else 3600)
    return 1.0
'''


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=cwd,
    )


def make_dataset(root: Path, n_images: int = 4) -> Path:
    """A small valid COCO dataset: grey-level images with two boxes each."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for index in range(1, n_images + 1):
        pixels = np.full((48, 64, 3), (40 * index) % 256, np.uint8)
        cv2.imwrite(str(root / "images" / f"{index}.png"), pixels)
        images.append({"id": index, "file_name": f"{index}.png", "width": 64, "height": 48})
        for k, box in enumerate(([2, 2, 10, 10], [20, 10, 30, 20])):
            annotations.append(
                {"id": index * 10 + k, "image_id": index, "category_id": 1, "bbox": box, "area": 1.0, "iscrowd": 0}
            )
    document = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    path = root / "annotations.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture()
def metrics(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "brightness.py").write_text(BRIGHTNESS)
    (folder / "area.py").write_text(BOX_AREA)
    return folder / "brightness.py", folder / "area.py"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_scores_every_item_and_writes_csv(tmp_path: Path, metrics: tuple[Path, Path]) -> None:
    annotations = make_dataset(tmp_path / "data")
    before = annotations.read_bytes()
    out = tmp_path / "scores.csv"
    result = run_cli("score", "--annotations", str(annotations), "--metric", str(metrics[0]),
                     "--metric", str(metrics[1]), "--out", str(out), "--workers", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    assert [row["metric"] for row in rows] == ["mean_brightness"] * 4 + ["box_area"] * 8
    brightness = {int(row["image_id"]): float(row["score"]) for row in rows if row["metric"] == "mean_brightness"}
    assert brightness == pytest.approx({i: 40 * i / 255 for i in range(1, 5)})
    areas = {int(row["annotation_id"]): float(row["score"]) for row in rows if row["metric"] == "box_area"}
    assert areas[10] == 100.0 and areas[41] == 600.0
    assert all(row["error"] == "" and row["annotation_id"] == "" for row in rows[:4])
    assert "mean_brightness" in result.stderr and "sandbox:" in result.stderr
    assert annotations.read_bytes() == before, "the user's file must never be modified"
    assert not (tmp_path / "scores.csv.partial").exists()


def test_jsonl_and_parquet_outputs_hold_the_same_rows(tmp_path: Path, metrics: tuple[Path, Path]) -> None:
    annotations = make_dataset(tmp_path / "data")
    outputs = {}
    for suffix in ("jsonl", "parquet"):
        if suffix == "parquet":
            pytest.importorskip("pyarrow", reason="pyarrow is needed for .parquet output")
        out = tmp_path / f"scores.{suffix}"
        result = run_cli("score", "--annotations", str(annotations), "--metric", str(metrics[1]), "--out", str(out))
        assert result.returncode == 0, result.stderr
        outputs[suffix] = out
    from agent.metrics.results import read_rows

    as_jsonl = read_rows(outputs["jsonl"])
    as_parquet = read_rows(outputs["parquet"])
    assert len(as_jsonl) == 8
    assert as_jsonl == as_parquet


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_a_score_file_gets_the_mode_the_umask_gives_new_files(tmp_path: Path, suffix: str) -> None:
    # It was 0600 (mkstemp's), unlike every other file a run writes: nobody else could read the scores.
    if suffix == "parquet":
        pytest.importorskip("pyarrow", reason="pyarrow is needed for .parquet output")
    from agent.metrics.results import read_rows, write_rows

    source = tmp_path / "one.jsonl"
    source.write_text(
        '{"metric": "m", "level": "image", "image_id": 1, "annotation_id": null, "score": 1.0, "error_kind": null, '
        '"error": null, "suspicious": "high", "code_sha256": null, "origin": null}\n'
    )
    rows = read_rows(source)
    out = tmp_path / f"scores.{suffix}"
    previous = os.umask(0o027)
    try:
        write_rows(out, rows)
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o640
    assert read_rows(out) == rows


def test_every_format_records_each_metrics_direction_code_and_origin(
    tmp_path: Path, metrics: tuple[Path, Path]
) -> None:
    """What `eval` and `report` need later, read from the files as written, not through read_rows."""
    annotations = make_dataset(tmp_path / "data", n_images=2)
    builtin_sha256 = load_metric_file("builtin:brightness").code_sha256
    expected = {
        "box_area": {
            "level": "object",
            "suspicious": "low",
            "code_sha256": hashlib.sha256(BOX_AREA.encode()).hexdigest(),
            "origin": f"file:{metrics[1]}",
        },
        "brightness": {
            "level": "image",
            "suspicious": "low",
            "code_sha256": builtin_sha256,
            "origin": "builtin:brightness",
        },
    }
    for suffix in ("csv", "jsonl", "parquet"):
        if suffix == "parquet":
            pytest.importorskip("pyarrow", reason="pyarrow is needed for .parquet output")
        out = tmp_path / f"scores.{suffix}"
        result = run_cli("score", "--annotations", str(annotations), "--metric", str(metrics[1]),
                         "--metric", "builtin:brightness", "--out", str(out))  # fmt: skip
        assert result.returncode == 0, result.stderr
        if suffix == "csv":
            rows = read_csv(out)
        elif suffix == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(out).to_pylist()
            metadata = json.loads(pq.read_schema(out).metadata[b"metricsmith"])
            assert metadata == {"metrics": expected}
        assert sorted(row["metric"] for row in rows) == ["box_area"] * 4 + ["brightness"] * 2
        for row in rows:  # every row, not only the first: the file must survive `sort` or `grep` whole
            assert {key: row[key] for key in expected[row["metric"]]} == expected[row["metric"]], (suffix, row)


def test_malformed_coco_is_one_clear_line_and_exit_2(tmp_path: Path, metrics: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],\n "annotations": [}')
    result = run_cli("score", "--annotations", str(bad), "--metric", str(metrics[0]), "--out", str(tmp_path / "o.csv"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "line 2" in lines[0]
    assert not (tmp_path / "o.csv").exists()


def test_invalid_coco_lists_every_problem(tmp_path: Path, metrics: tuple[Path, Path]) -> None:
    document = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2]},
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 2]},
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps(document))
    result = run_cli("score", "--annotations", str(path), "--metric", str(metrics[0]), "--out", str(tmp_path / "o.csv"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    text = result.stderr
    assert "already used" in text and "image_id 7" in text and "w=0" in text
    assert len(text.strip().splitlines()) >= 3, "all problems are reported, not only the first"


def test_missing_and_corrupt_images_are_per_item_errors(tmp_path: Path, metrics: tuple[Path, Path]) -> None:
    annotations = make_dataset(tmp_path / "data")
    (tmp_path / "data" / "images" / "2.png").unlink()
    (tmp_path / "data" / "images" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    out = tmp_path / "scores.csv"
    result = run_cli("score", "--annotations", str(annotations), "--metric", str(metrics[0]),
                     "--metric", str(metrics[1]), "--out", str(out))  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "2.png" in result.stderr, "the missing file is named in a warning"
    rows = read_csv(out)
    by_image: dict[int, set[str]] = {}
    for row in rows:
        by_image.setdefault(int(row["image_id"]), set()).add(row["error_kind"])
    assert by_image[2] == {"image_unreadable"} and by_image[3] == {"image_unreadable"}
    assert by_image[1] == {""} and by_image[4] == {""}
    errors = {row["error"] for row in rows if row["image_id"] == "3"}
    assert any("3.png" in error for error in errors)


def test_bad_metric_file_is_refused_before_scoring(tmp_path: Path) -> None:
    annotations = make_dataset(tmp_path / "data")
    metric = tmp_path / "broken.py"
    metric.write_text(
        '"""x"""\nNAME = "broken"\nLEVEL = "box"\nSUSPICIOUS = "low"\n\ndef score(image, scene):\n    return 1\n'
    )
    result = run_cli(
        "score", "--annotations", str(annotations), "--metric", str(metric), "--out", str(tmp_path / "o.csv")
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {metric}:3: LEVEL must be 'image' or 'object', got 'box'"


def test_workers_with_the_ray_engine_is_refused_not_ignored(tmp_path: Path) -> None:
    # Checked before Ray is looked for: the same line with or without the ray extra.
    annotations = make_dataset(tmp_path / "data")
    result = run_cli("score", "--annotations", str(annotations), "--out", str(tmp_path / "o.csv"),
                     "--engine", "ray", "--workers", "4")  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "error: --workers goes with --engine local; with --engine ray, give --workers-per-node"
    )
    assert not (tmp_path / "o.csv").exists()


def test_require_isolation_refuses_when_a_layer_is_missing(tmp_path: Path, metrics: tuple[Path, Path]) -> None:
    annotations = make_dataset(tmp_path / "data")
    # Without /usr/bin on PATH, bwrap can't be found: the run must refuse rather than run less isolated.
    env = {"PATH": os.path.dirname(sys.executable)}
    result = run_cli("score", "--annotations", str(annotations), "--metric", str(metrics[0]),
                     "--out", str(tmp_path / "o.csv"), "--require-isolation", env=env)  # fmt: skip
    assert result.returncode == 2
    assert "isolation required" in result.stderr and "bwrap" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_ctrl_c_kills_workers_and_keeps_what_was_scored(tmp_path: Path) -> None:
    annotations = make_dataset(tmp_path / "data", n_images=40)
    metric = tmp_path / "stuck.py"
    metric.write_text(STUCK_AFTER_TWO)
    out = tmp_path / "scores.jsonl"
    process = start_as_from_a_terminal(
        [sys.executable, "-m", "agent.cli", "score", "--annotations", str(annotations), "--metric", str(metric),
         "--out", str(out), "--workers", "2", "--timeout", "600"]
    )  # fmt: skip
    journal = tmp_path / "scores.jsonl.partial"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (journal.exists() and journal.read_text().count("\n") >= 2):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    from sandbox.isolation import probe_machine

    machine = probe_machine()
    sandbox_line = next(line for line in stderr.splitlines() if line.startswith("sandbox: "))
    active = sandbox_line.removeprefix("sandbox: ").split(" active")[0]
    for layer in ("landlock", "seccomp", "bwrap"):  # the workers had theirs, interrupted or not
        assert (layer in active) == machine.get(layer).available, sandbox_line
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["image_id"] for row in rows) == [1, 2], "exactly what was scored before the signal"
    assert all(row["score"] == 1.0 for row in rows)
    leftover = subprocess.run(["pgrep", "-f", "sandbox.worker"], capture_output=True, text=True).stdout.split()
    ours = [pid for pid in leftover if str(tmp_path) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    assert ours == [], "every worker was killed"


def test_doctor_json_reports_each_layer() -> None:
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = [layer["name"] for layer in report["layers"]]
    assert names[0] == "rlimits" and {"landlock", "seccomp", "bwrap"} <= set(names)
    from sandbox.isolation import probe_machine

    machine = probe_machine()
    for layer in report["layers"]:
        if layer["name"] in ("landlock", "seccomp", "bwrap"):
            assert layer["active"] == machine.get(layer["name"]).available, layer
    inactive = [layer["name"] for layer in report["layers"] if not layer["active"]]
    assert len(report["missing_protections"]) == len(inactive)


def test_unwritable_output_is_one_line_and_exit_2(tmp_path: Path, metrics: tuple[Path, Path]) -> None:
    annotations = make_dataset(tmp_path / "data")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    out = blocker / "scores.csv"
    result = run_cli("score", "--annotations", str(annotations), "--metric", str(metrics[0]), "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(blocker) in lines[0]
    assert "Traceback" not in result.stderr


def test_summary_shows_the_first_failure_of_each_kind(tmp_path: Path) -> None:
    annotations = make_dataset(tmp_path / "data")
    (tmp_path / "data" / "images" / "2.png").unlink()
    metric = tmp_path / "half_failing.py"
    metric.write_text(HALF_FAILING)
    out = tmp_path / "scores.csv"
    result = run_cli("score", "--annotations", str(annotations), "--metric", str(metric),
                     "--out", str(out), "--workers", "2")  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    # Odd ids 11, 21, 31, 41; image 2 is gone, so its boxes 20 and 21 fail as unreadable instead.
    # Image 1 comes first in the file, whichever worker answered first.
    assert "half_failing: 3 exception, first at image 1 (1.png) annotation 11: ZeroDivisionError: division by zero" in (
        lines
    ), result.stderr
    assert (
        "half_failing: 2 image_unreadable, first at image 2 (2.png) annotation 20: cannot decode 2.png: file not found"
        in lines
    ), result.stderr
    assert "about to divide by zero" not in result.stderr, "what the metric printed stays in the file"
    errors = [row["error"] for row in read_csv(out) if row["error_kind"] == "exception"]
    assert len(errors) == 3 and all("about to divide by zero" in error for error in errors)


def _summary(stderr: str) -> list[str]:
    """The summary as printed, without its title (which names the output)."""
    return [line for line in stderr.splitlines() if not line.strip().startswith("wrote ")]


def test_out_directory_holds_the_parquet_files_rows_schema_and_summary(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="a directory of parts needs pyarrow")
    from agent.metrics.results import read_rows

    annotations = make_dataset(tmp_path / "data")
    (tmp_path / "data" / "images" / "2.png").unlink()  # failures too: the summary's first-failure lines
    metric = tmp_path / "half_failing.py"
    metric.write_text(HALF_FAILING)
    common = ["score", "--annotations", str(annotations), "--metric", str(metric), "--metric", "builtin:brightness",
              "--metric", "builtin:appearance_neighbours", "--workers", "2"]  # fmt: skip
    single = run_cli(*common, "--out", str(tmp_path / "scores.parquet"))
    parts = run_cli(*common, "--out", f"{tmp_path / 'parts'}/")
    assert single.returncode == parts.returncode == 1, parts.stderr
    assert _summary(parts.stderr) == _summary(single.stderr)
    assert f"wrote {tmp_path / 'parts'}/" in parts.stderr
    assert read_rows(tmp_path / "parts") == read_rows(tmp_path / "scores.parquet")
    one, many = pq.read_table(tmp_path / "scores.parquet"), pq.read_table(tmp_path / "parts")
    assert many.schema.equals(one.schema, check_metadata=True) and many.num_rows == one.num_rows
    # Ordinary rows in numbered parts, the feature metric's in its own; nothing hidden left behind.
    assert sorted(path.name for path in (tmp_path / "parts").iterdir()) == [
        "part-000000.parquet",
        "part-features.parquet",
    ]


@pytest.mark.parametrize("case", ["not empty", "a file", "under a file"])
def test_an_unusable_out_directory_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    pytest.importorskip("pyarrow", reason="a directory of parts needs pyarrow")
    annotations = make_dataset(tmp_path / "data", n_images=1)
    blocker = tmp_path / "taken"
    if case == "not empty":
        blocker.mkdir()
        (blocker / "old.parquet").write_text("")
        out, expected = f"{blocker}/", f"error: {blocker}/: the directory is not empty"
    else:
        blocker.write_text("a file")
        out = f"{blocker}/" if case == "a file" else f"{blocker}/sub/"
        expected = f"error: {out}: {blocker} is a file, not a directory"
    result = run_cli("score", "--annotations", str(annotations), "--metric", "builtin:brightness", "--out", out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr


def test_a_jsonl_line_reads_back_as_its_row_and_a_score_that_is_not_finite_is_refused() -> None:
    row = ScoreRow(metric="m", level="object", image_id=2**63 - 1, annotation_id=7, score=0.1 + 0.2, error='é\n"x"')
    line = json_line(row)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == row.as_dict()  # the float to its last bit, the id to 64 bits, the text as it was
    for score in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="not a finite number"):
            json_line(ScoreRow(metric="m", level="object", image_id=1, annotation_id=1, score=score))


def test_a_dataset_none_of_whose_images_is_found_is_one_error_not_a_run_of_failures(tmp_path: Path) -> None:
    # The usual cause is a wrong image folder: the run wrote a file of image_unreadable rows and exited 1.
    annotations = make_dataset(tmp_path / "data", n_images=6)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "annotations.json").write_bytes(annotations.read_bytes())
    result = run_cli("score", "--annotations", str(elsewhere / "annotations.json"), "--metric", "builtin:brightness",
                     "--out", str(tmp_path / "o.jsonl"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"warning: {elsewhere / 'annotations.json'}: images: none of the 6 image files is in {elsewhere} "
        f"(the first would be {elsewhere / '1.png'})",
        f"error: none of the 6 images of {elsewhere / 'annotations.json'} is in {elsewhere} (the first would be "
        f"{elsewhere / '1.png'}); give the folder that holds them with --images",
    ], result.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_a_journal_left_by_a_run_that_stopped_is_kept_and_readable(tmp_path: Path, metrics: tuple[Path, Path]) -> None:
    # A rerun into the same file overwrote the journal of the run that was killed, and with it what it had scored.
    annotations = make_dataset(tmp_path / "data")
    out = tmp_path / "scores.jsonl"
    first = run_cli("score", "--annotations", str(annotations), "--metric", str(metrics[1]), "--out", str(out))
    assert first.returncode == 0, first.stderr
    left = out.read_bytes()
    (tmp_path / "scores.jsonl.partial").write_bytes(left[: left.index(b"\n") + 1])  # as a SIGKILL leaves it
    second = run_cli("score", "--annotations", str(annotations), "--metric", str(metrics[1]), "--out", str(out))
    assert second.returncode == 0, second.stderr
    kept = tmp_path / "scores.jsonl.partial.1"
    assert f"its rows are kept in {kept}" in second.stderr.replace("\n", " ")
    assert kept.read_bytes() == left[: left.index(b"\n") + 1]
    assert not (tmp_path / "scores.jsonl.partial").exists()
    from agent.metrics.results import read_rows

    assert len(read_rows(kept)) == 1


def test_a_jpeg_cut_short_is_unreadable_and_a_whole_one_with_a_trailer_is_not(tmp_path: Path) -> None:
    # libjpeg fills a truncated file's missing rows with grey and only warns: it was scored as a greyed-out photo.
    from sandbox.worker import _read

    pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3)).astype(np.uint8)
    for name, options in (("baseline", []), ("progressive", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                          ("restarts", [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])):  # fmt: skip
        whole = tmp_path / f"{name}.jpg"
        assert cv2.imwrite(str(whole), pixels, options)
        data = whole.read_bytes()
        (tmp_path / f"{name}-trailer.jpg").write_bytes(data + bytes(range(256)) * 400)  # a phone's appended video
        (tmp_path / f"{name}-cut.jpg").write_bytes(data[: len(data) // 2])
        assert _read(str(whole))[1] is None
        assert _read(str(tmp_path / f"{name}-trailer.jpg"))[1] is None
        image, error = _read(str(tmp_path / f"{name}-cut.jpg"))
        assert (
            image is None
            and error == f"cannot decode {name}-cut.jpg: the JPEG file ends before its image does (truncated)"
        )


def test_text_from_files_and_metrics_is_shown_as_written_not_as_rich_markup(tmp_path: Path) -> None:
    # A `[/i]` in a metric's error made rich raise (an internal error, exit 70), and a `[b]` in a name vanished.
    annotations = make_dataset(tmp_path / "data")
    document = json.loads(annotations.read_text())
    document["images"][0]["file_name"] = "[b]missing[/i].png"
    annotations.write_text(json.dumps(document))
    metric = tmp_path / "markup.py"
    metric.write_text(
        '"""Fails to load, with markup in its message."""\n'
        'NAME = "markup"\nLEVEL = "image"\nSUSPICIOUS = "high"\n'
        'raise ValueError("bad [/i] box [bold]")\n\n\ndef score(image, scene):\n    return 1.0\n'
    )
    result = run_cli(
        "score", "--annotations", str(annotations), "--metric", str(metric), "--out", str(tmp_path / "o.jsonl")
    )
    assert result.returncode == 1, result.stderr
    assert "ValueError: bad [/i] box [bold]" in result.stderr
    assert "[b]missing[/i].png" in result.stderr and "internal error" not in result.stderr


def test_an_output_whose_folder_cannot_be_made_is_refused_before_scoring(tmp_path: Path) -> None:
    # It failed after the run, naming the journal (OUT.partial) the user never gave: "afile: File exists".
    annotations = make_dataset(tmp_path / "data")
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "o.csv"
    result = run_cli("score", "--annotations", str(annotations), "--metric", "builtin:brightness", "--out", str(out))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: --out {out}: {tmp_path / 'afile'} is a file, so no folder can be made in it"
    )


def test_an_output_folder_no_file_can_be_made_in_is_refused_before_scoring(tmp_path: Path) -> None:
    # /proc passes a permission check for root, yet takes no new file: it failed after the whole run.
    annotations = make_dataset(tmp_path / "data")
    out = Path("/proc/o.csv")
    result = run_cli("score", "--annotations", str(annotations), "--metric", "builtin:brightness", "--out", str(out))
    assert result.returncode == 2
    why = "no file can be made in /proc: " if os.geteuid() == 0 else "/proc is not writable"
    assert result.stderr.strip().startswith(f"error: --out {out}: {why}")
    assert "sandbox" not in result.stderr  # refused before any worker started
    assert not list(Path("/proc").glob(".metricsmith-probe-*"))


@pytest.mark.parametrize(
    ("command", "out"),
    [
        # It named the report's temporary file (/proc/.r.html.1a2b3c4d.tmp), which the user never gave.
        (["report", "--scores", "s.csv"], "/proc/r.html"),
        # These failed making the folder, after the injection or after the whole scoring run.
        (["inject"], "/proc/injected"),
        (["triage", "--metric", "builtin:brightness"], "/proc/triaged"),
    ],
)
def test_an_out_no_file_can_be_made_in_is_refused_first_and_named_as_given(
    tmp_path: Path, command: list[str], out: str
) -> None:
    annotations = make_dataset(tmp_path / "data")
    result = run_cli(command[0], "--annotations", str(annotations), *command[1:], "--out", out, cwd=tmp_path)
    assert result.returncode == 2
    why = "no file can be made in /proc: " if os.geteuid() == 0 else "/proc is not writable"
    assert result.stderr.strip().startswith(f"error: --out {out}: {why}"), result.stderr


@pytest.mark.parametrize(
    ("command", "module", "runner"),
    [
        (["selftest"], "agent.cli.selftest", "run_selftest"),
        (["triage", "--out", "t"], "agent.cli.triage", "run_triage"),
    ],
)
def test_selftest_and_triage_refuse_a_dataset_without_its_images_before_any_copy(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    module: str,
    runner: str,
) -> None:
    # They made every seed's injected copy first: minutes and gigabytes on a COCO-sized file, then this line.
    import importlib

    from agent.cli.main import main

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the copies were made before the images were looked for")

    monkeypatch.setattr(importlib.import_module(module), runner, never)
    monkeypatch.chdir(tmp_path)
    annotations = make_dataset(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    code = main([command[0], "--annotations", str(annotations), "--images", str(tmp_path / "empty"), *command[1:]])
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: none of the ") and "give the folder that holds them with --images" in line


def test_scores_are_never_written_over_the_annotations_file(tmp_path: Path) -> None:
    # `--out` the annotations' own path (a .jsonl-named COCO file) replaced the user's dataset with score rows.
    annotations = make_dataset(tmp_path / "data")
    renamed = annotations.rename(annotations.with_suffix(".jsonl"))
    before = renamed.read_bytes()
    result = run_cli("score", "--annotations", str(renamed), "--metric", "builtin:brightness", "--out", str(renamed))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --out {renamed} is the annotations file: the scores would replace your dataset; choose another"
    )
    assert renamed.read_bytes() == before


def _brightness_rows(folder: Path, images: list[dict]) -> list[dict]:
    """The rows of `score --metric builtin:brightness` on a dataset of these images (in folder/images), no boxes."""
    document = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    annotations = folder / "annotations.json"
    annotations.write_text(json.dumps(document))
    out = folder / "s.jsonl"
    result = run_cli("score", "--annotations", str(annotations), "--metric", "builtin:brightness", "--out", str(out))
    assert out.exists(), result.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF segment holding only the orientation tag (0x0112), right after its start marker."""
    import struct

    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    segment = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + jpeg[2:]


def test_an_image_its_exif_tag_turns_says_so_when_its_size_disagrees(tmp_path: Path) -> None:
    # "x.jpg is 48x64 but the annotations say 64x48" sent the user to a file that really is 64x48 as stored.
    (tmp_path / "images").mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels)
    assert ok
    (tmp_path / "images" / "turned.jpg").write_bytes(_with_exif_orientation(encoded.tobytes(), 6))
    [row] = _brightness_rows(tmp_path, [{"id": 1, "file_name": "turned.jpg", "width": 64, "height": 48}])
    assert row["error_kind"] == "image_unreadable"
    assert row["error"].startswith("turned.jpg is 48x64 but the annotations say 64x48 (turned as its EXIF orientation")


def test_an_unreadable_image_file_says_what_it_is(tmp_path: Path) -> None:
    # A folder, an empty file and a link that loops all read "not a readable image" or "file not found".
    images = tmp_path / "images"
    images.mkdir()
    (images / "folder.jpg").mkdir()
    (images / "empty.jpg").write_bytes(b"")
    (images / "loop.jpg").symlink_to(images / "loop.jpg")
    (images / "garbage.jpg").write_bytes(b"not an image at all")
    names = ["folder.jpg", "empty.jpg", "loop.jpg", "garbage.jpg"]
    images_listed = [{"id": i, "file_name": name, "width": 8, "height": 8} for i, name in enumerate(names, start=1)]
    errors = {row["image_id"]: row["error"] for row in _brightness_rows(tmp_path, images_listed)}
    assert errors == {
        1: "cannot decode folder.jpg: a folder, not an image file",
        2: "cannot decode empty.jpg: an empty file (0 bytes)",
        3: "cannot decode loop.jpg: a link that leads nowhere (its target is missing, or links loop)",
        4: "cannot decode garbage.jpg: not a readable image (an unknown format, or a damaged file)",
    }


@pytest.fixture
def python_handles_ctrl_c() -> Iterator[None]:
    # A suite started in the background by a shell runs with SIGINT ignored: give it Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_handles_ctrl_c")
def test_a_ctrl_c_dropped_inside_a_weakref_callback_is_raised_after_it() -> None:
    # Python raised the KeyboardInterrupt inside the callback, which can't raise: it was printed as
    # "Exception ignored" and dropped, and the command went on as if nothing had been pressed. The import
    # system runs such callbacks (for its module locks) all through a command's first seconds.
    import weakref

    from agent.cli.entry import no_lost_ctrl_c

    class Lock:
        pass

    def callback(ref: object) -> None:
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):  # Python code, which is where the interrupt is raised: here, inside the callback
            pass

    dropped: list[object] = []
    with no_lost_ctrl_c():
        hook = sys.unraisablehook
        sys.unraisablehook = lambda unraisable: (dropped.append(unraisable.exc_type), hook(unraisable))  # type: ignore[func-returns-value]
        lock = Lock()
        ref = weakref.ref(lock, callback)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            del lock  # the callback runs here
            for _ in range(500):  # Python code, as a command runs: where the interrupt can be raised
                time.sleep(0.01)
        assert ref() is None
        assert time.monotonic() - started < 2, "raised at once, not once the work was done"
        sys.unraisablehook = hook
    assert dropped == [KeyboardInterrupt], "the callback did drop it: the case this is about"


def test_ctrl_c_while_the_fitting_processes_start_prints_no_traceback(tmp_path: Path) -> None:
    # A terminal's Ctrl-C goes to its whole process group. The learned metrics' fork server, importing
    # scikit-learn for a second or two, died of it with a traceback; processes the host had asked it for
    # just before it left failed to start, each with a traceback of its own, all on the terminal.
    from agent.data.demo import generate_demo_dataset

    annotations = generate_demo_dataset(tmp_path / "demo", n_images=30, seed=0)
    command = [sys.executable, "-m", "agent.cli", "score", "--annotations", str(annotations), "--metric",
               "builtin:learned", "--out", str(tmp_path / "scores.jsonl"), "--workers", "2"]  # fmt: skip
    returncode, stdout, stderr = ctrl_c_once_a_child_starts(command, b"multiprocessing.forkserver")
    assert returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stdout + stderr
