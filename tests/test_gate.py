"""The approval gate: decisions bound to the code's hash, the state machine, promotion, the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.authoring.candidates import CandidateRecord, list_candidates, load_candidate, now_iso, save_candidate
from agent.metrics.contract import code_sha256
from agent.metrics.library import load_library_metric
from agent.review.gate import GateRefused, approve, promote_candidate, record_edit, reject

CODE = '''"""Box area, for the gate tests."""

NAME = "box_area"
LEVEL = "object"
SUSPICIOUS = "low"


def score(image, obj, scene):
    return obj["bbox"][2] * obj["bbox"][3]
'''


def make_candidate(run_dir: Path, code: str = CODE, passed: bool = True) -> str:
    sha = code_sha256(code)
    record = CandidateRecord(
        id=f"box_area-{sha[:8]}",
        name="box_area",
        level="object",
        suspicious="low",
        idea="flag tiny boxes",
        code_sha256=sha,
        created_at=now_iso(),
        validation_passed=passed,
        backend="replay",
        model="test",
    )
    folder = run_dir / "candidates" / record.id
    folder.mkdir(parents=True)
    (folder / "metric.py").write_text(code)
    (folder / "validation.json").write_text(json.dumps({"passed": passed}))
    save_candidate(run_dir, record)
    return record.id


def decisions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]


def test_approve_then_promote_binds_the_library_to_the_approved_code(tmp_path: Path) -> None:
    candidate = make_candidate(tmp_path)
    approved = approve(tmp_path, candidate, by="ana", note="good for tiny boxes")
    assert approved.status == "approved" and approved.approval is not None
    assert approved.approval.code_sha256 == code_sha256(CODE)
    entry = promote_candidate(tmp_path, candidate, tmp_path / "library", by="ana")
    assert entry.manifest.version == 1 and entry.manifest.approval.approver == "ana"
    assert entry.manifest.approval.note == "good for tiny boxes"
    assert entry.manifest.provenance.backend == "replay" and entry.manifest.validation == {"passed": True}
    assert load_library_metric("lib:box_area", tmp_path / "library").source == CODE
    assert load_candidate(tmp_path, candidate).status == "promoted"
    assert [(d["action"], d["by"], d["code_sha256"]) for d in decisions(tmp_path)] == [
        ("approve", "ana", code_sha256(CODE)),
        ("promote", "ana", code_sha256(CODE)),
    ]


def test_a_hand_edit_after_validation_voids_the_decision(tmp_path: Path) -> None:
    candidate = make_candidate(tmp_path)
    approve(tmp_path, candidate, by="ana")
    (tmp_path / "candidates" / candidate / "metric.py").write_text(CODE.replace("* obj", "+ obj"))
    with pytest.raises(GateRefused, match="changed since it was validated"):
        promote_candidate(tmp_path, candidate, tmp_path / "library")
    record = load_candidate(tmp_path, candidate)
    assert record.status == "pending" and record.approval is None
    with pytest.raises(GateRefused, match="changed since it was validated"):
        approve(tmp_path, candidate)
    assert not (tmp_path / "library").exists()


def test_edit_through_the_gate_needs_validation_again(tmp_path: Path) -> None:
    candidate = make_candidate(tmp_path)
    approve(tmp_path, candidate, by="ana")
    edited = record_edit(tmp_path, candidate, CODE.replace("* obj", "+ obj"), by="ana")
    assert edited.status == "pending" and edited.approval is None and not edited.validation_passed
    assert edited.code_sha256 == code_sha256(CODE.replace("* obj", "+ obj"))
    with pytest.raises(GateRefused, match="did not pass validation"):
        approve(tmp_path, candidate)
    assert [d["action"] for d in decisions(tmp_path)] == ["approve", "edit"]


def test_reject_needs_a_reason_and_ends_the_candidate(tmp_path: Path) -> None:
    candidate = make_candidate(tmp_path)
    with pytest.raises(GateRefused, match="needs a reason"):
        reject(tmp_path, candidate, "  ")
    rejected = reject(tmp_path, candidate, "duplicates object_area_relative", by="bo")
    assert rejected.status == "rejected" and rejected.rejection is not None
    assert rejected.rejection.note == "duplicates object_area_relative"
    with pytest.raises(GateRefused, match="only a pending candidate can be approved"):
        approve(tmp_path, candidate)
    with pytest.raises(GateRefused, match="only an approved candidate can be promoted"):
        promote_candidate(tmp_path, candidate, tmp_path / "library")


def test_unknown_candidates_and_failed_validation(tmp_path: Path) -> None:
    failing = make_candidate(tmp_path, passed=False)
    with pytest.raises(GateRefused, match="did not pass validation"):
        approve(tmp_path, failing)
    with pytest.raises(Exception, match=f"candidates: {failing}"):
        approve(tmp_path, "other_name-0123abcd")
    with pytest.raises(Exception, match="is not a candidate id"):
        approve(tmp_path, "../../etc")
    assert [record.id for record in list_candidates(tmp_path)] == [failing]


def test_policy_approval_is_recorded_as_such(tmp_path: Path) -> None:
    candidate = make_candidate(tmp_path)
    approve(tmp_path, candidate, by="batch", policy="--approve-passing: every validation check passed")
    assert decisions(tmp_path)[0]["policy"].startswith("--approve-passing")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60)


def test_approve_and_reject_commands(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    candidate = make_candidate(run_dir)
    other = make_candidate(run_dir, CODE.replace("* obj", "+ obj"))
    library = tmp_path / "library"
    result = _cli("approve", str(run_dir), candidate, "--note", "ok", "--by", "ana", "--library", str(library))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        f"approved {candidate} (code {code_sha256(CODE)[:12]}), promoted as lib:box_area@1 in {library}"
    )
    again = _cli("approve", str(run_dir), candidate, "--library", str(library))
    assert again.returncode == 2 and again.stderr.strip().endswith("only a pending candidate can be approved")
    assert _cli("reject", str(run_dir), other).returncode == 2  # --reason is required
    rejected = _cli("reject", str(run_dir), other, "--reason", "adds nothing")
    assert rejected.returncode == 0 and rejected.stderr.strip() == f"rejected {other}: adds nothing"
    assert [d["action"] for d in decisions(run_dir)] == ["approve", "promote", "reject"]


def test_an_unusable_library_is_refused_before_the_approval_and_an_approved_candidate_can_be_promoted_later(
    tmp_path: Path,
) -> None:
    # A library that was a file failed the promotion after the approval, and the candidate was stuck at approved.
    run_dir = tmp_path / "run"
    candidate = make_candidate(run_dir)
    not_a_folder = tmp_path / "libfile"
    not_a_folder.write_text("")
    refused = _cli("approve", str(run_dir), candidate, "--library", str(not_a_folder))
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        == f"error: {not_a_folder}: the library is a folder, and this is a file; give another --library"
    )
    assert load_candidate(run_dir, candidate).status == "pending" and not (run_dir / "decisions.jsonl").exists()
    assert _cli("approve", str(run_dir), candidate, "--no-promote").returncode == 0
    library = tmp_path / "library"
    later = _cli("approve", str(run_dir), candidate, "--library", str(library))
    assert later.returncode == 0, later.stderr
    assert later.stderr.strip() == (
        f"{candidate} was approved (code {code_sha256(CODE)[:12]}), promoted as lib:box_area@1 in {library}"
    )
    assert [d["action"] for d in decisions(run_dir)] == ["approve", "promote"]


def test_a_library_locked_by_another_process_is_an_error_not_a_silent_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    from agent.errors import UserError
    from agent.metrics import library as library_module

    run_dir = tmp_path / "run"
    candidate = make_candidate(run_dir)
    approve(run_dir, candidate)
    library = tmp_path / "library"
    library.mkdir()
    monkeypatch.setattr(library_module, "LOCK_WAIT_S", 0.3)
    with open(library / ".lock", "a+b") as holder:  # another process's hold: flock locks are per open file
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(UserError, match=r"another process has held the library's lock .* for 0.3 s"):
            promote_candidate(run_dir, candidate, library)
    assert promote_candidate(run_dir, candidate, library).manifest.version == 1


def test_twin_candidates_of_two_ideas_are_named_by_their_idea_not_picked_silently(tmp_path: Path) -> None:
    # Two ideas that wrote the same code share an id: `approve RUN ID` acted on the first, whatever was meant.
    from agent.authoring.candidates import locate_candidate
    from agent.errors import UserError

    run = tmp_path / "batch"
    first, second = run / "ideas" / "01-one", run / "ideas" / "02-two"
    twin = make_candidate(first)
    assert make_candidate(second) == twin
    with pytest.raises(UserError, match=f"{twin} is a candidate of 2 ideas .*give the idea's folder"):
        locate_candidate(run, twin)
    assert locate_candidate(second, twin) == second
    result = _cli("approve", str(second), twin, "--no-promote")
    assert result.returncode == 0, result.stderr
    assert load_candidate(second, twin).status == "approved" and load_candidate(first, twin).status == "pending"


@pytest.mark.parametrize("given", ["missing", "file.toml"])
def test_review_of_a_folder_that_is_no_run_is_an_error_not_nothing_pending(tmp_path: Path, given: str) -> None:
    (tmp_path / "file.toml").write_text("ideas = []\n")
    result = _cli("review", str(tmp_path / given))
    assert result.returncode == 2 and "give the run folder that `metricsmith author` or `batch` wrote" in result.stderr


def test_an_approve_and_a_reject_at_once_decide_once(tmp_path: Path) -> None:
    # Both read the candidate pending; both were logged, and the last write won whatever the log said.
    for round_number in range(3):
        run_dir = tmp_path / f"run{round_number}"
        candidate = make_candidate(run_dir)
        base = [sys.executable, "-m", "agent.cli"]
        approving = subprocess.Popen([*base, "approve", str(run_dir), candidate, "--no-promote"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        rejecting = subprocess.Popen([*base, "reject", str(run_dir), candidate, "--reason", "no"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        codes = {"approve": approving.wait(timeout=60), "reject": rejecting.wait(timeout=60)}
        winners = [action for action, code in codes.items() if code == 0]
        assert len(winners) == 1, codes
        assert [d["action"] for d in decisions(run_dir)] == winners
        assert load_candidate(run_dir, candidate).status == {"approve": "approved", "reject": "rejected"}[winners[0]]
