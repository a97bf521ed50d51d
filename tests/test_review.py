"""`metricsmith review`: the interactive gate, driven through its standard input like a person would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.author_job import AuthorJob, run_author_job
from agent.authoring import AuthoringSettings
from agent.candidates import list_candidates, twins
from agent.demo_data import generate_demo_dataset
from agent.scripted_model import ScriptedModel
from agent.transcript import read_transcript

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transcripts"))
import record_fixtures as fixtures


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    demo = generate_demo_dataset(tmp_path / "demo", n_images=12, seed=0, width=320, height=240)
    run = tmp_path / "run"
    run_author_job(
        AuthorJob(
            idea=fixtures.IDEA,
            annotations=demo,
            run_dir=run,
            backend=ScriptedModel([fixtures.fenced(fixtures.GOOD)]),
            errors=demo.parent / "errors.json",
            settings=AuthoringSettings(),
            workers=2,
        )
    )
    return run


def review(run: Path, answers: str, library: Path, editor: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(run), "EDITOR": editor or "true"}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "review", str(run), "--library", str(library)],
        input=answers,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_review_shows_the_evidence_and_approval_promotes(run_dir: Path, tmp_path: Path) -> None:
    result = review(run_dir, "a\nedges find empty boxes\n", tmp_path / "lib")
    assert result.returncode == 0, result.stderr
    for shown in ("edge_density", "validation: passed", "scores on the whole dataset", "█", "eval on the known errors"):
        assert shown in result.stdout, shown
    assert "report.html" in result.stdout  # the contact sheet of the worst and best items
    assert "promoted as lib:edge_density@1" in result.stderr
    record = list_candidates(run_dir)[0]
    assert record.status == "promoted" and record.approval is not None
    assert record.approval.note == "edges find empty boxes"
    # Each decision is on the session's record too, after its outcome.
    events = read_transcript(run_dir / "transcript.jsonl").events
    assert [e.data["action"] for e in events if e.event == "decision"] == ["approve", "promote"]
    assert events[-1].data["code_sha256"] == record.code_sha256


def test_a_rejection_needs_a_reason(run_dir: Path, tmp_path: Path) -> None:
    result = review(run_dir, "r\n\nr\ntoo close to box_tightness\n", tmp_path / "lib")
    assert result.returncode == 0, result.stderr
    assert "a rejection needs a reason" in result.stderr
    record = list_candidates(run_dir)[0]
    assert record.status == "rejected" and record.rejection is not None
    assert record.rejection.note == "too close to box_tightness"
    assert not (tmp_path / "lib").exists()


def test_skip_and_end_of_input_decide_nothing(run_dir: Path, tmp_path: Path) -> None:
    assert review(run_dir, "s\n", tmp_path / "lib").returncode == 0
    assert list_candidates(run_dir)[0].status == "pending"
    ended = review(run_dir, "", tmp_path / "lib")
    assert ended.returncode == 2 and "nothing was decided" in ended.stderr
    assert list_candidates(run_dir)[0].status == "pending"


def test_edit_validates_again_and_the_new_code_is_what_gets_approved(run_dir: Path, tmp_path: Path) -> None:
    editor = f'{sys.executable} -c "import sys,pathlib; p=pathlib.Path(sys.argv[1]); '
    editor += "p.write_text(p.read_text().replace('edges.size', '(edges.size + 1)'))\""
    result = review(run_dir, "e\na\n\n", tmp_path / "lib", editor=editor)
    assert result.returncode == 0, result.stderr
    record = list_candidates(run_dir)[0]
    assert record.status == "promoted"
    code = (run_dir / "candidates" / record.id / "metric.py").read_text()
    assert "(edges.size + 1)" in code
    decisions = [json.loads(line)["action"] for line in (run_dir / "decisions.jsonl").read_text().splitlines()]
    assert decisions == ["edit", "approve", "promote"]
    library_code = next((tmp_path / "lib").glob("edge_density/v1/metric.py")).read_text()
    assert library_code == code


def test_review_says_when_two_ideas_got_the_same_code(tmp_path: Path) -> None:
    demo = generate_demo_dataset(tmp_path / "demo", n_images=12, seed=0, width=320, height=240)
    batch = tmp_path / "batch"
    ideas = ("boxes with no edges inside", "empty boxes")
    for number, idea in enumerate(ideas, start=1):
        run_author_job(
            AuthorJob(
                idea=idea, annotations=demo, run_dir=batch / "ideas" / f"0{number}",
                backend=ScriptedModel([fixtures.fenced(fixtures.GOOD)]), workers=2,
            )
        )  # fmt: skip
    result = review(batch, "s\ns\n", tmp_path / "lib")
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if line.startswith("the same code was also written")]
    assert said == [
        "the same code was also written for another idea (pending): empty boxes",
        "the same code was also written for another idea (pending): boxes with no edges inside",
    ]


def test_twins_are_told_apart_by_idea_and_id(run_dir: Path) -> None:
    [record] = list_candidates(run_dir)
    again = record.model_copy(update={"idea": "another idea"})
    edited = record.model_copy(update={"id": "edge_density-0000", "code_sha256": "0" * 64})
    assert twins(record, [record, again, edited]) == [again]
