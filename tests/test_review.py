"""`metricsmith review`: the interactive gate, driven through its standard input like a person would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.authoring.candidates import list_candidates, twins
from agent.authoring.job import AuthorJob, run_author_job
from agent.authoring.loop import AuthoringSettings
from agent.cli.batch import ReviewTally
from agent.data.demo import generate_demo_dataset
from agent.llm.backends.scripted import ScriptedModel
from agent.llm.transcript import read_transcript

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


HINT = "press a (approve), r (reject), e (edit), s (skip), q (quit)"
PROMPTS = ("[a]pprove, [r]eject, [e]dit, [s]kip, [q]uit? ", "note (optional): ", "reason: ")


def said(result: subprocess.CompletedProcess) -> list[str]:
    """The lines review wrote on stderr, without its prompts (the answers are not echoed from a pipe)."""
    text = result.stderr
    for prompt in PROMPTS:
        text = text.replace(prompt, "")
    return text.splitlines()


@pytest.fixture()
def two_ideas(tmp_path: Path) -> Path:
    """A batch run of two ideas whose candidates got byte-identical code, both pending."""
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
    return batch


def test_review_shows_the_evidence_and_approval_promotes(run_dir: Path, tmp_path: Path) -> None:
    result = review(run_dir, "a\nedges find empty boxes\n", tmp_path / "lib")
    assert result.returncode == 0, result.stderr
    for shown in ("edge_density", "validation: passed", "scores on the whole dataset", "█", "eval on the known errors"):
        assert shown in result.stdout, shown
    assert "report.html" in result.stdout  # the contact sheet of the worst and best items
    assert said(result) == [
        f"promoted as lib:edge_density@1 in {tmp_path / 'lib'}",
        "review finished: 1 approved (lib:edge_density@1), 0 rejected, 0 left pending",
    ]
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
    record = list_candidates(run_dir)[0]
    assert said(result) == [
        "a rejection needs a reason",
        f"review finished: 0 approved, 1 rejected ({record.id}), 0 left pending",
    ]
    assert record.status == "rejected" and record.rejection is not None
    assert record.rejection.note == "too close to box_tightness"
    assert not (tmp_path / "lib").exists()


def test_skip_and_end_of_input_decide_nothing(run_dir: Path, tmp_path: Path) -> None:
    skipped = review(run_dir, "s\n", tmp_path / "lib")
    assert skipped.returncode == 0
    assert said(skipped) == [
        "review finished: 0 approved, 0 rejected, 1 left pending",
        f"the pending candidates wait for the next `metricsmith review {run_dir}`",
    ]
    assert list_candidates(run_dir)[0].status == "pending"
    ended = review(run_dir, "", tmp_path / "lib")
    assert ended.returncode == 2
    assert said(ended) == [
        "review stopped: 0 approved, 0 rejected, 0 left pending, 1 not reviewed",
        f"the pending candidates wait for the next `metricsmith review {run_dir}`",
        "error: no answer on standard input; review stopped (nothing was decided for this candidate)",
    ]
    assert list_candidates(run_dir)[0].status == "pending"


def test_an_unknown_key_says_which_keys_are_valid(run_dir: Path, tmp_path: Path) -> None:
    # "as" is refused rather than read as its first letter: a typo must not approve anything.
    result = review(run_dir, "x\nas\nq\n", tmp_path / "lib")
    assert result.returncode == 0, result.stderr
    assert said(result) == [
        f"unknown choice 'x': {HINT}",
        f"unknown choice 'as': {HINT}",
        "review stopped: 0 approved, 0 rejected, 0 left pending, 1 not reviewed",
        f"the pending candidates wait for the next `metricsmith review {run_dir}`",
    ]
    assert result.stdout.count("validation: passed") == 1  # the hint, not the whole candidate again
    assert list_candidates(run_dir)[0].status == "pending"


def test_the_summary_lists_every_decision(two_ideas: Path, tmp_path: Path) -> None:
    result = review(two_ideas, "approve\n\nr\nthe same code as the first\n", tmp_path / "lib")
    assert result.returncode == 0, result.stderr
    first, second = (list_candidates(run)[0] for run in sorted((two_ideas / "ideas").iterdir()))
    assert (first.status, second.status) == ("promoted", "rejected")
    assert said(result) == [
        f"promoted as lib:edge_density@1 in {tmp_path / 'lib'}",
        f"review finished: 1 approved (lib:edge_density@1), 1 rejected ({second.id}), 0 left pending",
    ]


def test_quit_leaves_the_rest_pending(two_ideas: Path, tmp_path: Path) -> None:
    result = review(two_ideas, "a\n\nq\n", tmp_path / "lib")
    assert result.returncode == 0, result.stderr
    assert said(result) == [
        f"promoted as lib:edge_density@1 in {tmp_path / 'lib'}",
        "review stopped: 1 approved (lib:edge_density@1), 0 rejected, 0 left pending, 1 not reviewed",
        f"the pending candidates wait for the next `metricsmith review {two_ideas}`",
    ]
    assert [list_candidates(run)[0].status for run in sorted((two_ideas / "ideas").iterdir())] == [
        "promoted",
        "pending",
    ]


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


def test_review_says_when_two_ideas_got_the_same_code(two_ideas: Path, tmp_path: Path) -> None:
    result = review(two_ideas, "s\ns\n", tmp_path / "lib")
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if line.startswith("the same code was also written")]
    assert said == [
        "the same code was also written for another idea (pending): empty boxes",
        "the same code was also written for another idea (pending): boxes with no edges inside",
    ]


def test_the_summary_names_an_approval_whose_promotion_failed() -> None:
    tally = ReviewTally(total=5, approved=["lib:a@1", "b-0123abcd"], rejected=["c-4567ef01"], left_pending=1)
    expected = (
        "review stopped: 2 approved (lib:a@1, b-0123abcd), 1 rejected (c-4567ef01), 1 left pending, 1 not reviewed"
    )
    assert tally.summary(finished=False) == expected
    assert tally.still_pending == 2


def test_twins_are_told_apart_by_idea_and_id(run_dir: Path) -> None:
    [record] = list_candidates(run_dir)
    again = record.model_copy(update={"idea": "another idea"})
    edited = record.model_copy(update={"id": "edge_density-0000", "code_sha256": "0" * 64})
    assert twins(record, [record, again, edited]) == [again]


def test_approving_code_that_failed_validation_asks_again(run_dir: Path, tmp_path: Path) -> None:
    # An edit that breaks the metric leaves it pending; in the next review, `a` must not end the review.
    editor = f'{sys.executable} -c "import sys,pathlib; p=pathlib.Path(sys.argv[1]); '
    editor += "p.write_text(p.read_text().replace('return float(', 'return 1 / 0 * float('))\""
    first = review(run_dir, "e\n", tmp_path / "lib", editor=editor)
    assert "the edited code did not pass validation; it stays pending" in said(first)
    again = review(run_dir, "a\ns\n", tmp_path / "lib")
    assert again.returncode == 0, again.stderr
    lines = said(again)
    assert "this code did not pass validation, so it cannot be approved: edit, reject or skip it" in lines
    assert list_candidates(run_dir)[0].status == "pending"
    assert not (tmp_path / "lib").exists()


def test_an_edit_that_breaks_the_contract_keeps_the_review_going_and_shows_no_stale_validation(
    run_dir: Path, tmp_path: Path
) -> None:
    # It ended the review ("metric.py:1: syntax error", no path), and the next showed the broken code beside
    # the old code's "validation: passed", histogram and figures.
    editor = f"{sys.executable} -c \"import sys,pathlib; pathlib.Path(sys.argv[1]).write_text('def score(:')\""
    first = review(run_dir, "e\ns\n", tmp_path / "lib", editor=editor)
    assert first.returncode == 0, first.stderr
    metric = run_dir / "candidates" / list_candidates(run_dir)[0].id / "metric.py"
    assert any(line.startswith(f"{metric}:") and "it stays pending, not validated" in line for line in said(first))
    record = list_candidates(run_dir)[0]
    assert record.status == "pending" and not record.validation_passed and record.evaluation is None
    assert not (metric.parent / "validation.json").exists() and not (metric.parent / "scores.csv").exists()
    again = review(run_dir, "s\n", tmp_path / "lib")
    assert "validation: none for this code (it was edited, and it did not load as a metric)" in again.stdout
    assert "validation: passed" not in again.stdout


def test_an_editor_that_cannot_run_is_named(run_dir: Path, tmp_path: Path) -> None:
    result = review(run_dir, "e\n", tmp_path / "lib", editor="/nonexistent/editor")
    assert result.returncode == 2
    assert "cannot run the editor $EDITOR ('/nonexistent/editor'): No such file or directory" in result.stderr
