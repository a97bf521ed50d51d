"""The authoring loop, end to end with a scripted model, and the shipped transcripts replayed offline."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from agent.authoring.candidates import load_candidate
from agent.authoring.job import AuthorJob, run_author_job
from agent.authoring.loop import AuthoringSettings, idea_from_text, model_defaults
from agent.data.demo import generate_demo_dataset
from agent.data.label_errors import load_errors
from agent.llm.backends.replay import ReplayMismatch
from agent.llm.backends.scripted import ScriptedModel
from agent.llm.transcript import read_transcript
from agent.review.view import show_candidate

REPO = Path(__file__).resolve().parents[1]
TRANSCRIPTS = sorted((REPO / "transcripts").glob("*.jsonl"))
sys.path.insert(0, str(REPO / "transcripts"))
import record_fixtures as fixtures  # noqa: E402

# What each shipped recording must come to when replayed.
EXPECTED_VERDICTS = {
    "fixture-success-first-time": ("passed", 1),
    "fixture-success-after-two-repairs": ("passed", 3),
    "fixture-give-up-after-budget": ("gave_up", 4),
    "fixture-format-then-recovery": ("passed", 3),
    "fixture-repeated-error-stops-early": ("gave_up", 2),
    "fixture-improvement-succeeds": ("passed", 2),
    "fixture-improvement-plateaus": ("gave_up", 2),
    "fixture-best-of-n-picks-the-second": ("passed", 3),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("authoring") / "demo", n_images=24, seed=0)


def _run(
    demo: Path, run_dir: Path, replies: list[str], settings: AuthoringSettings, idea: str = fixtures.IDEA
) -> tuple:
    model = ScriptedModel(replies)
    outcome = run_author_job(
        AuthorJob(
            idea=idea,
            annotations=demo,
            run_dir=run_dir,
            backend=model,
            description=fixtures.DESCRIPTION,
            errors=demo.parent / "errors.json",
            settings=settings,
            workers=2,
        )
    )
    return outcome, model, read_transcript(run_dir / "transcript.jsonl")


def test_idea_names() -> None:
    assert idea_from_text("flag boxes that aren't on a panda").name == "boxes_not_panda"
    assert idea_from_text("Very dark images!").level == "image"
    assert idea_from_text("???").name == "custom_metric"
    assert idea_from_text("fox boxes that are not mostly orange").name == "fox_boxes_not_mostly_orange"
    long = idea_from_text("boxes drawn around several overlapping animals grazing in tall grass at dusk")
    assert long.name == "boxes_drawn_around_several_overlapping_animals" and len(long.name) <= 48


def test_success_after_two_repairs_carries_each_failure_back(demo: Path, tmp_path: Path) -> None:
    replies, settings = fixtures.SCENARIOS["fixture-success-after-two-repairs"]
    outcome, model, transcript = _run(demo, tmp_path / "run", replies, settings)
    assert outcome.verdict == "passed" and model.remaining == 0
    assert [(r.kind, r.outcome) for r in outcome.rounds] == [
        ("implement", "failed"),
        ("repair", "failed"),
        ("repair", "passed"),
    ]
    # The whole conversation of the last request: system, the idea, each reply, each failure carried back.
    last = model.history[-1].messages
    assert [m.role for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "KeyError: 'box'" in last[3].content and 'obj["box"]' in last[3].content
    assert "ZeroDivisionError" in last[5].content and "the tiny 2×2 box" in last[5].content
    assert "explain the bug in 2-3 sentences" in last[5].content
    assert "worker.py" not in last[5].content, "the harness's frames are stripped from tracebacks"
    # The candidate is pending, bound to the code that passed, with its evidence.
    candidate = load_candidate(tmp_path / "run", outcome.candidate.id)
    assert candidate.status == "pending" and candidate.code_sha256 == outcome.candidate.code_sha256
    folder = tmp_path / "run" / "candidates" / candidate.id
    assert (folder / "metric.py").read_text() == fixtures.GOOD
    assert json.loads((folder / "validation.json").read_text())["passed"] is True
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert set(evaluation["evaluation"]["ap_by_type"]) >= {"shift", "loose", "spurious"}
    assert "Guard tiny boxes" in (folder / "rationale.md").read_text()
    # The transcript tells the story in order.
    events = [event.event for event in transcript.events]
    assert events.count("validation") == 3 and events[-1] == "outcome"
    assert len(transcript.exchanges) == 3 and transcript.meta.backend == "scripted"


def test_a_target_measures_the_candidate_on_errors_of_that_type_injected_into_the_data(
    demo: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    outcome, _, transcript = _run(demo, run, [fixtures.fenced(fixtures.GOOD)], AuthoringSettings(targets=("spurious",)))
    assert outcome.verdict == "passed" and outcome.candidate is not None
    useful = load_candidate(run, outcome.candidate.id).usefulness
    assert useful is not None and useful["targets"] == ["spurious"]
    for half in ("selection", "reporting"):
        figures = useful[half]
        assert figures["errors"] >= 5 and 0 < figures["random"] < 1 and figures["line"].startswith("AP ")
        assert figures["passed"] in (True, False) and figures["lower"] <= figures["upper"]
    assert useful["notes"] and "the dataset is small" in useful["notes"][-1]  # 24 images: fewer than wanted
    folder = run / "candidates" / outcome.candidate.id
    assert json.loads((folder / "usefulness.json").read_text()) == useful
    # The set is kept for inspection: the errors file is a real errors.json, of the target type only.
    assert {error.type for error in load_errors(run / "usefulness-set" / "errors.json").errors} == {"spurious"}
    assert transcript.meta.settings["authoring"]["targets"] == ["spurious"]

    shown = Console(record=True, width=200)
    show_candidate(shown, run, load_candidate(run, outcome.candidate.id))
    assert "usefulness on injected spurious" in shown.export_text()

    # A replay measures on the very same set: the same figures.
    again = tmp_path / "again"
    command = ["replay", str(run / "transcript.jsonl"), "--out", str(again), "--workers", "2"]
    replayed = subprocess.run(
        [sys.executable, "-m", "agent.cli", *command], capture_output=True, text=True, timeout=600
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert load_candidate(again, outcome.candidate.id).usefulness == useful


def _targeted(demo: Path, run: Path, scenario: str) -> tuple:
    replies, settings = fixtures.TARGETED_SCENARIOS[scenario]
    return _run(demo, run, replies, settings, idea=fixtures.SPURIOUS_IDEA)


def test_a_draft_that_runs_but_misses_gets_an_improvement_round_with_its_figures_and_misses(
    demo: Path, tmp_path: Path
) -> None:
    outcome, model, transcript = _targeted(demo, tmp_path / "run", "fixture-improvement-succeeds")
    assert outcome.verdict == "passed" and model.remaining == 0
    assert [(r.kind, r.outcome, r.improvement) for r in outcome.rounds] == [
        ("implement", "not_useful", 0), ("improve", "passed", 1),
    ]  # fmt: skip
    improve = model.history[1].messages[-1].content
    # Neither a repair nor a fresh draft: the same conversation, the figures per type, the misses, the code.
    assert "does not yet find the label errors" in improve and "- spurious: AP 0.242 against random's 0.197" in improve
    misses = improve.split("Where it went most wrong:")[1].split("The current code:")[0]
    assert misses.count("injected spurious") == 3 and misses.count("a clean box, yet ranked") == 2
    assert "x the median" in misses and fixtures.SATURATION.strip() in improve
    assert model.history[1].messages[1].content == model.history[0].messages[-1].content
    record = load_candidate(tmp_path / "run", outcome.candidate.id)
    assert record.code_sha256 == outcome.rounds[-1].code_sha256 and not record.unproven
    assert record.usefulness is not None and record.usefulness["selection"]["passed"] is True
    measured = [event.data for event in transcript.events if event.event == "measured"]
    assert [m["cleared"] for m in measured] == [False, True]


def test_an_improvement_that_does_not_raise_the_figure_stops_and_keep_unproven_leaves_the_best(
    demo: Path, tmp_path: Path
) -> None:
    outcome, model, transcript = _targeted(demo, tmp_path / "run", "fixture-improvement-plateaus")
    assert outcome.verdict == "gave_up" and model.remaining == 0
    assert "an improvement round did not raise the figure" in outcome.reason
    assert [event.data["why"] for event in transcript.events if event.event == "stopped"] == ["plateau"]
    # The draft kept is the better of the two on the selection half: the first, not the last.
    record = load_candidate(tmp_path / "run", outcome.candidate.id)
    assert record.unproven and record.code_sha256 == outcome.rounds[0].code_sha256
    shown = Console(record=True, width=300)
    show_candidate(shown, tmp_path / "run", record)
    text = shown.export_text()
    assert "runs, not shown useful" in text and "spurious: AP " in text and "lift" in text

    # Without --keep-unproven (the default) the idea leaves no candidate at all.
    replies, settings = fixtures.TARGETED_SCENARIOS["fixture-improvement-plateaus"]
    plain = dataclasses.replace(settings, keep_unproven=False)
    outcome, _, _ = _run(demo, tmp_path / "plain", replies, plain, idea=fixtures.SPURIOUS_IDEA)
    assert outcome.verdict == "gave_up" and outcome.candidate is None
    candidates = tmp_path / "plain" / "candidates"
    assert not candidates.exists() or not any(candidates.iterdir())


def test_best_of_n_keeps_the_best_sample_on_the_selection_half_and_counts_each(demo: Path, tmp_path: Path) -> None:
    outcome, model, transcript = _targeted(demo, tmp_path / "run", "fixture-best-of-n-picks-the-second")
    assert outcome.verdict == "passed" and model.remaining == 0
    assert [r.sample for r in outcome.rounds] == [1, 2, 3]
    seeds = [request.seed for request in model.history]
    assert len(set(seeds)) == 3, seeds  # each sample its own request and seed
    assert outcome.candidate is not None and outcome.candidate.code_sha256 == outcome.rounds[1].code_sha256
    # Tokens are counted per sample, and the idea's total is their sum.
    assert all(r.tokens > 0 for r in outcome.rounds) and sum(r.tokens for r in outcome.rounds) == outcome.tokens
    assert [e.data["sample"] for e in transcript.events if e.event == "chosen"] == [2]
    # The bar tightens with every draft tried (Bonferroni): best-of-N must not let chance through.
    bars = [e.data["bar_p"] for e in transcript.events if e.event == "measured"]
    assert bars == pytest.approx([0.05, 0.025, 0.05 / 3])
    # The one kept is judged against the bar of all three: it was chosen among them.
    kept = outcome.candidate.usefulness
    assert kept is not None and kept["tries"] == 3 and kept["bar_p"] == pytest.approx(0.05 / 3)


def test_a_p_value_that_clears_one_try_does_not_clear_eight() -> None:
    from agent.authoring.usefulness_check import HalfFigures, Usefulness

    half = HalfFigures(passed=True, level="object", items=400, errors=40, ap=0.3, random=0.1, lower=0.01,
                       upper=0.2, by_type={}, line="", random_high=0.2, p_value=0.01)  # fmt: skip
    once = Usefulness(targets=["shift"], seed=0, images=100, selection=half, reporting=half)
    assert once.cleared is True
    eighth = once.model_copy(update={"tries": 8, "bar_p": 0.05 / 8})
    assert eighth.cleared is False and "bar 0.0063 with 8 drafts tried: does not clear it" in eighth.decision()
    # With several targets, the one-line summary (the batch report's) gives each type beside random's.
    typed = half.model_copy(update={"by_type": {"shift": (0.3, 0.1), "loose": (None, None)}})
    two = Usefulness(targets=["shift", "loose"], seed=0, images=100, selection=typed, reporting=typed)
    assert "per type: shift: AP 0.300 vs random 0.100 (lift 3.00x); loose: no such errors" in two.summary()


def test_given_no_target_the_model_proposes_one_and_the_transcript_records_it(demo: Path, tmp_path: Path) -> None:
    replies = ["spurious, loose", fixtures.fenced(fixtures.CENTRE_RIM)]
    settings = AuthoringSettings(propose_targets=True)
    outcome, model, transcript = _run(demo, tmp_path / "run", replies, settings, idea=fixtures.SPURIOUS_IDEA)
    assert model.remaining == 0 and "Which label errors should it catch?" in model.history[0].messages[-1].content
    assert [e.data["targets"] for e in transcript.events if e.event == "targets_proposed"] == [["loose", "spurious"]]
    assert outcome.candidate is not None and outcome.candidate.usefulness is not None
    assert outcome.candidate.usefulness["targets"] == ["loose", "spurious"]
    assert transcript.meta.settings["authoring"]["propose_targets"] is True
    # A reply that names no target leaves the idea unjudged, validated as before.
    outcome, _, _ = _run(demo, tmp_path / "none", ["no idea", fixtures.fenced(fixtures.GOOD)], settings)
    assert outcome.verdict == "passed" and outcome.candidate is not None and outcome.candidate.usefulness is None


def test_samples_apply_only_where_a_figure_can_choose(demo: Path, tmp_path: Path) -> None:
    # No target: nothing to choose on, so one sample is asked for whatever `samples` says.
    outcome, model, _ = _run(demo, tmp_path / "run", [fixtures.fenced(fixtures.GOOD)], AuthoringSettings(samples=4))
    assert outcome.verdict == "passed" and len(model.history) == 1


def test_give_up_after_the_budget_states_the_final_failure(demo: Path, tmp_path: Path) -> None:
    replies, settings = fixtures.SCENARIOS["fixture-give-up-after-budget"]
    outcome, model, transcript = _run(demo, tmp_path / "run", replies, settings)
    assert outcome.verdict == "gave_up" and outcome.candidate is None and model.remaining == 0
    assert outcome.reason.startswith("validation failed: error_rate: ZeroDivisionError")
    # Two drafts, each a fresh conversation: the second draft's first request holds no earlier reply.
    assert [m.role for m in model.history[2].messages] == ["system", "user"]
    assert [e.event for e in transcript.events].count("draft") == 2
    assert not (tmp_path / "run" / "candidates").exists()
    assert len(list((tmp_path / "run" / "attempts").iterdir())) == 4


def test_format_failure_then_recovery(demo: Path, tmp_path: Path) -> None:
    replies, settings = fixtures.SCENARIOS["fixture-format-then-recovery"]
    outcome, model, _ = _run(demo, tmp_path / "run", replies, settings)
    assert outcome.verdict == "passed"
    assert [r.outcome for r in outcome.rounds] == ["format_problem", "format_problem", "passed"]
    assert "```python" in model.history[1].messages[-1].content  # asked for a fenced file
    assert "pandas" in model.history[2].messages[-1].content  # told which import is not allowed


def test_a_repeated_error_stops_the_draft_early(demo: Path, tmp_path: Path) -> None:
    replies, settings = fixtures.SCENARIOS["fixture-repeated-error-stops-early"]
    outcome, model, transcript = _run(demo, tmp_path / "run", replies, settings)
    assert outcome.verdict == "gave_up" and model.remaining == 0  # 3 repairs allowed, 1 used
    assert [r.outcome for r in outcome.rounds] == ["failed", "repeated_error"]
    assert any(e.event == "stopped" and e.data["why"] == "repeated_error" for e in transcript.events)


def test_repeated_code_stops_without_validating_again(demo: Path, tmp_path: Path) -> None:
    code = fixtures.fenced(fixtures.ZERO_DIVISION)
    outcome, _, transcript = _run(demo, tmp_path / "run", [code, code], AuthoringSettings(max_drafts=1))
    assert [r.outcome for r in outcome.rounds] == ["failed", "repeated_code"]
    assert [e.event for e in transcript.events].count("validating") == 1


def test_an_empty_reply_is_asked_again_not_extracted(demo: Path, tmp_path: Path) -> None:
    outcome, model, _ = _run(demo, tmp_path / "run", ["", fixtures.fenced(fixtures.GOOD)], AuthoringSettings())
    assert outcome.verdict == "passed"
    assert "your reply was empty" in model.history[1].messages[-1].content


def test_the_token_cap_ends_the_idea(demo: Path, tmp_path: Path) -> None:
    replies = [fixtures.fenced(fixtures.WRONG_KEY), fixtures.fenced(fixtures.ZERO_DIVISION)]
    outcome, model, _ = _run(demo, tmp_path / "run", replies, AuthoringSettings(token_cap=1000))
    assert outcome.verdict == "gave_up" and "over its cap" in outcome.reason
    assert model.remaining == 1


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda path: path.stem)
def test_shipped_transcripts_replay_to_the_same_outcome(path: Path, tmp_path: Path) -> None:
    transcript = read_transcript(path)
    assert transcript.meta.origin == ("fixture" if path.stem.startswith("fixture-") else "recorded")
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", str(path), "--out", str(tmp_path / "run"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "same outcome as recorded" in result.stdout
    if path.stem in EXPECTED_VERDICTS:
        verdict, exchanges = EXPECTED_VERDICTS[path.stem]
        assert f"{verdict} after {exchanges} exchanges" in result.stdout


def test_every_scenario_is_shipped() -> None:
    scenarios = set(fixtures.SCENARIOS) | set(fixtures.TARGETED_SCENARIOS)
    assert {path.stem for path in TRANSCRIPTS} >= scenarios == set(EXPECTED_VERDICTS)
    assert any(path.stem.startswith("local-") for path in TRANSCRIPTS), "real local-model recordings ship too"


def test_a_changed_template_fails_the_replay_naming_it(tmp_path: Path) -> None:
    path = REPO / "transcripts" / "fixture-success-after-two-repairs.jsonl"
    lines = path.read_text().splitlines()
    first = next(index for index, line in enumerate(lines) if json.loads(line)["kind"] == "exchange")
    exchange = json.loads(lines[first])
    exchange["request"]["templates"]["implement.j2"] = "0" * 64  # as if recorded with another implement.j2
    exchange["request"]["messages"][1]["content"] += " (old wording)"
    lines[first] = json.dumps(exchange)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", str(tampered), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert "template implement.j2 changed since the recording" in result.stderr
    assert "(old wording)" in result.stderr  # the diff shows what differs
    assert ReplayMismatch.__name__  # the error class the CLI turned into that line


def test_a_dead_model_server_is_exit_3_with_one_line_and_on_the_record(demo: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "author", "very dark images", "--annotations", str(demo),
         "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", "--out", str(run_dir)],
        capture_output=True, text=True, timeout=300,
        env={key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"error: cannot connect to the model server at http://127.0.0.1:{port}"
    )
    assert "Traceback" not in result.stderr
    exchanges = read_transcript(run_dir / "transcript.jsonl").exchanges
    assert len(exchanges) == 1 and exchanges[0].error_kind == "unreachable"


class _Named:
    """Just the identity of a backend: what model_defaults looks at."""

    def __init__(self, name: str, mode: str) -> None:
        self.name, self.model, self.mode = name, "m", mode


@pytest.mark.parametrize(
    ("name", "mode", "asked", "expected"),
    [
        ("local", "completion", None, True),  # the embedded base model: held by default
        ("local", "completion", False, False),  # --no-grammar
        ("local", "chat", None, False),  # a GGUF with a chat template: grammars are for completions
        ("openai", "completion", None, False),  # OpenAI itself rejects the field: only when asked
        ("openai", "completion", True, True),  # --grammar, for a llama.cpp server
        ("openai", "chat", True, False),
    ],
)
def test_model_defaults_choose_the_grammar(name: str, mode: str, asked: bool | None, expected: bool) -> None:
    defaults = model_defaults(_Named(name, mode), grammar=asked)  # type: ignore[arg-type]
    assert defaults["grammar"] is expected
    assert defaults["max_tokens"] == (512 if name == "local" else AuthoringSettings().max_tokens)
    assert model_defaults(_Named(name, mode), max_tokens=99)["max_tokens"] == 99  # type: ignore[arg-type]
    # Best-of-N: a grammar-held model's one-line samples are cheap, so 8 of them; otherwise one.
    assert defaults["samples"] == (8 if expected else 1)
    assert model_defaults(_Named(name, mode), samples=3)["samples"] == 3  # type: ignore[arg-type]


@pytest.mark.parametrize("problem", ["empty idea", "bad errors file"])
def test_an_empty_idea_or_a_bad_errors_file_is_refused_before_the_model_is_asked(
    demo: Path, tmp_path: Path, problem: str
) -> None:
    # The errors file was read only after a draft had been paid for and validated; an empty idea went to the model.
    from agent.errors import UserError

    bad = tmp_path / "errors.json"
    bad.write_text("{not json")
    model = ScriptedModel([])  # any request would fail: nothing may be asked
    job = AuthorJob(
        idea="  " if problem == "empty idea" else fixtures.IDEA,
        annotations=demo,
        run_dir=tmp_path / "run",
        backend=model,
        errors=bad if problem == "bad errors file" else None,
        settings=AuthoringSettings(max_repairs=0, max_drafts=1),
        workers=1,
    )
    with pytest.raises(UserError, match="the idea is empty" if problem == "empty idea" else "not valid JSON"):
        run_author_job(job)
    assert not (tmp_path / "run").exists()
