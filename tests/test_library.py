"""The metric library: versions, the sha256 binding, removal, and two processes promoting at once."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_cli_score import make_dataset

from agent.errors import UserError
from agent.metrics.library import (
    Approval,
    Provenance,
    library_versions,
    list_library,
    load_library_metric,
    promote,
    remove_metric,
    resolve_metric,
)


def source(name: str = "box_area", value: str = "1.0") -> str:
    return (
        f'"""Box area, for the library tests ({value})."""\n\n'
        f'NAME = "{name}"\nLEVEL = "object"\nSUSPICIOUS = "low"\n\n\n'
        f"def score(image, obj, scene):\n    return {value}\n"
    )


def approval_for(code: str, note: str | None = None) -> Approval:
    return Approval(
        approver="tester",
        approved_at=datetime.now(UTC).isoformat(),
        note=note,
        code_sha256=hashlib.sha256(code.encode()).hexdigest(),
    )


def test_promote_then_load_by_name_and_version(tmp_path: Path) -> None:
    first, second = source(value="1.0"), source(value="2.0")
    entry = promote(tmp_path, first, approval_for(first, "looks right"), Provenance(backend="replay", model="m"))
    assert entry.manifest.version == 1 and entry.path.read_text() == first
    assert promote(tmp_path, second, approval_for(second)).manifest.version == 2
    assert load_library_metric("lib:box_area", tmp_path).source == second
    assert load_library_metric("lib:box_area@1", tmp_path).source == first
    assert resolve_metric("lib:box_area@2", tmp_path).origin == "library"
    assert [e.manifest.version for e in library_versions(tmp_path, "box_area")] == [1, 2]
    assert [e.manifest.name for e in list_library(tmp_path)] == ["box_area"]
    manifest = library_versions(tmp_path, "box_area")[0].manifest
    assert manifest.approval.note == "looks right" and manifest.provenance.backend == "replay"


def test_promoting_the_same_code_again_makes_no_new_version(tmp_path: Path) -> None:
    code = source()
    promote(tmp_path, code, approval_for(code))
    assert promote(tmp_path, code, approval_for(code)).manifest.version == 1
    assert len(library_versions(tmp_path, "box_area")) == 1


def test_approval_must_match_the_code(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="approve this code first"):
        promote(tmp_path, source(value="3.0"), approval_for(source(value="1.0")))
    assert list_library(tmp_path) == []


def test_code_edited_after_approval_is_refused(tmp_path: Path) -> None:
    code = source()
    entry = promote(tmp_path, code, approval_for(code))
    entry.path.write_text(code.replace("return 1.0", "return 2.0"))
    with pytest.raises(UserError, match="changed after it was approved"):
        load_library_metric("lib:box_area", tmp_path)


@pytest.mark.parametrize(
    ("ref", "message"),
    [("lib:nope", "no metric named nope"), ("lib:box_area@7", "has no version 7"), ("lib:Bad-Name", "lib:NAME")],
)
def test_bad_references_are_one_line(tmp_path: Path, ref: str, message: str) -> None:
    code = source()
    promote(tmp_path, code, approval_for(code))
    with pytest.raises(UserError, match=message):
        load_library_metric(ref, tmp_path)


def test_remove_takes_every_version(tmp_path: Path) -> None:
    for value in ("1.0", "2.0"):
        code = source(value=value)
        promote(tmp_path, code, approval_for(code))
    assert remove_metric(tmp_path, "box_area") == 2
    assert list_library(tmp_path) == []
    with pytest.raises(UserError, match="no metric named box_area"):
        remove_metric(tmp_path, "box_area")


def _promote_many(library: str, worker: int, count: int) -> None:
    for index in range(count):
        code = source(value=f"{worker}.{index}")
        promote(Path(library), code, approval_for(code))


def test_two_processes_promoting_at_once_lose_nothing(tmp_path: Path) -> None:
    count = 25
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_promote_many, args=(str(tmp_path), worker, count)) for worker in (1, 2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    entries = library_versions(tmp_path, "box_area")
    assert [entry.manifest.version for entry in entries] == list(range(1, 2 * count + 1))
    values = sorted(entry.path.read_text().split("return ")[1].strip() for entry in entries)
    assert values == sorted(f"{worker}.{index}" for worker in (1, 2) for index in range(count))
    for entry in entries:
        load_library_metric(f"lib:box_area@{entry.manifest.version}", tmp_path)  # every binding holds
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_cli_lists_shows_scores_with_and_removes_library_metrics(tmp_path: Path) -> None:
    library = tmp_path / "lib"
    for value in ("1.0", "2.0"):
        code = source(value=value)
        promote(library, code, approval_for(code, note=f"v{value}"))
    listed = json.loads(_cli("library", "list", "--json", "--library", str(library), cwd=tmp_path).stdout)
    mine = [row for row in listed if row["source"] == "library"]
    assert mine == [
        {"name": "box_area", "level": "object", "suspicious": "low", "description": mine[0]["description"],
         "source": "library", "version": 2, "changed_since_approval": False}
    ]  # fmt: skip
    assert any(row["source"] == "builtin" and row["name"] == "box_tightness" for row in listed)
    shown = _cli("library", "show", "box_area", "--library", str(library), cwd=tmp_path)
    assert shown.returncode == 0 and "v1" in shown.stdout and "v2.0" in shown.stdout and "return 2.0" in shown.stdout

    annotations = make_dataset(tmp_path / "data", n_images=2)
    out = tmp_path / "scores.csv"
    result = _cli("score", "--annotations", str(annotations), "--metric", "lib:box_area@1", "--library",
                  str(library), "--out", str(out), "--workers", "1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {row["score"] for row in csv.DictReader(out.open())} == {"1.0"}
    # The rows name the version that ran and its code, so eval and report need no metric file later.
    first_sha256 = hashlib.sha256(source(value="1.0").encode()).hexdigest()
    recorded = {(row["origin"], row["code_sha256"], row["suspicious"]) for row in csv.DictReader(out.open())}
    assert recorded == {("lib:box_area@1", first_sha256, "low")}
    # The environment variable names the library too.
    env_result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "score", "--annotations", str(annotations), "--metric", "lib:box_area",
         "--out", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "METRICSMITH_LIBRARY": str(library)},
    )  # fmt: skip
    assert env_result.returncode == 0, env_result.stderr
    assert {row["score"] for row in csv.DictReader(out.open())} == {"2.0"}
    assert {row["origin"] for row in csv.DictReader(out.open())} == {"lib:box_area@2"}, "the latest, by number"

    removed = _cli("library", "remove", "box_area", "--library", str(library), cwd=tmp_path)
    assert removed.returncode == 0 and "2 versions" in removed.stderr
    missing = _cli("score", "--annotations", str(annotations), "--metric", "lib:box_area", "--library", str(library),
                   "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: lib:box_area: no metric named box_area in the library {library}"


def test_list_and_show_say_when_a_promoted_file_was_changed_after_its_approval(tmp_path: Path) -> None:
    # show printed the edited code under the approved sha256 and approver, as if it were what was approved.
    import subprocess
    import sys

    library = tmp_path / "library"
    code = source()
    entry = promote(library, code, approval_for(code), Provenance(backend="scripted", model="m"))
    entry.path.write_text(code + "# changed by hand\n")
    run = [sys.executable, "-m", "agent.cli", "library"]
    shown = subprocess.run([*run, "show", entry.manifest.name, "--library", str(library)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0 and f"warning: {entry.path} was changed after it was approved" in shown.stderr
    listed = subprocess.run([*run, "list", "--library", str(library), "--json"], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    (row,) = [row for row in json.loads(listed.stdout) if row["source"] == "library"]
    assert row["changed_since_approval"] is True


def test_a_library_folder_that_does_not_exist_is_named_as_such(tmp_path: Path) -> None:
    from agent.errors import UserError
    from agent.metrics.library import load_library_metric

    with pytest.raises(UserError, match=r"the library .*nowhere does not exist"):
        load_library_metric("lib:foo", tmp_path / "nowhere")
