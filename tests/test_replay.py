"""Replay: strict, in order, and a mismatch says which template changed and shows the difference."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from agent.errors import UserError
from agent.llm.backends.replay import ReplayBackend, ReplayMismatch
from agent.llm.model import (
    Message,
    ModelBackend,
    ModelReply,
    ModelRequest,
    ModelUnreachable,
    TextSink,
    Usage,
    hand_over,
)
from agent.llm.transcript import RecordingBackend, TranscriptMeta, TranscriptWriter, read_transcript

DRAFT_SHA = "1a2b3c" + "0" * 58
REPAIR_SHA = "4d5e6f" + "0" * 58
NEW_REPAIR_SHA = "7a8b9c" + "0" * 58
PROMPT = "\n".join(f"Rule {n}: metrics return a finite float or None." for n in range(30))


def request(turn: str, *, repair_sha: str = REPAIR_SHA, prompt: str = PROMPT) -> ModelRequest:
    return ModelRequest(
        mode="chat",
        messages=(Message(role="system", content=prompt), Message(role="user", content=turn)),
        temperature=0.2,
        max_tokens=256,
        templates={"draft.j2": DRAFT_SHA, "repair.j2": repair_sha},
    )


def reply(text: str) -> ModelReply:
    return ModelReply(
        text=text, finish_reason="stop", usage=Usage(prompt_tokens=9, completion_tokens=3), model="m", latency_s=0.25
    )


class QueuedModel:
    """A test model with queued replies or exceptions."""

    name = "queued"
    model = "queued-1"
    mode = "completion"

    def __init__(self, *queue: ModelReply | BaseException) -> None:
        self.queue = list(queue)

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        item = self.queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return hand_over(item, on_text)


def record(path: Path, *steps: tuple[ModelRequest, ModelReply | BaseException]) -> Path:
    """Run a session through RecordingBackend, the way the loop records one."""
    inner = QueuedModel(*(outcome for _, outcome in steps))
    with TranscriptWriter(path, TranscriptMeta.for_backend(inner, templates={"draft.j2": DRAFT_SHA})) as writer:
        backend = RecordingBackend(inner, writer)
        for sent, _ in steps:
            with contextlib.suppress(ModelUnreachable):  # recorded all the same; that is what is tested
                backend.complete(sent)
    return path


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return record(
        tmp_path / "session.jsonl",
        (request("draft a metric"), reply("draft 1")),
        (request("repair: ZeroDivisionError"), reply("draft 2")),
    )


def test_replay_answers_identical_requests_in_order(recording: Path) -> None:
    backend = ReplayBackend(recording)
    assert isinstance(backend, ModelBackend)
    assert (backend.name, backend.model, backend.mode) == ("replay", "queued-1", "completion")
    assert backend.complete(request("draft a metric")) == reply("draft 1")
    assert len(backend.unused) == 1
    assert backend.complete(request("repair: ZeroDivisionError")) == reply("draft 2")
    assert backend.unused == ()
    backend.finish()


def test_replay_accepts_a_transcript_already_read(recording: Path) -> None:
    backend = ReplayBackend(read_transcript(recording))
    backend.complete(request("draft a metric"))
    backend.complete(request("repair: ZeroDivisionError"))
    backend.finish()


def test_order_is_strict(recording: Path) -> None:
    backend = ReplayBackend(recording)
    with pytest.raises(ReplayMismatch, match="replay mismatch at request 0"):
        backend.complete(request("repair: ZeroDivisionError"))
    assert len(backend.unused) == 2  # a failed match consumes nothing


def test_a_changed_template_is_named_and_the_difference_shown(recording: Path) -> None:
    backend = ReplayBackend(recording)
    backend.complete(request("draft a metric"))
    changed = request("repair: ZeroDivisionError (now with the line number)", repair_sha=NEW_REPAIR_SHA)
    with pytest.raises(ReplayMismatch) as caught:
        backend.complete(changed)
    summary, *diff = str(caught.value).splitlines()
    assert summary == (
        f"replay mismatch at request 1 in {recording}: template repair.j2 changed since the recording: "
        "sha 4d5e6f… → 7a8b9c…; re-record the session to accept the change"
    )
    assert diff[:2] == ["--- recorded request 1", "+++ new request 1"]
    assert '-   "content": "repair: ZeroDivisionError",' in diff
    assert '+   "content": "repair: ZeroDivisionError (now with the line number)",' in diff
    assert f'-  "repair.j2": "{REPAIR_SHA}"' in diff
    assert f'+  "repair.j2": "{NEW_REPAIR_SHA}"' in diff
    # The unchanged 30-line system prompt is not repeated in full: only context around the changes.
    assert sum("Rule" in line for line in diff) <= 6


def test_added_and_removed_templates_are_named(recording: Path) -> None:
    new = request("draft a metric").model_copy(update={"templates": {"draft.j2": DRAFT_SHA, "hint.j2": "9" * 64}})
    with pytest.raises(ReplayMismatch) as caught:
        ReplayBackend(recording).complete(new)
    assert "template hint.j2 is new since the recording (sha 999999…)" in str(caught.value)
    assert "template repair.j2 is no longer used (it was sha 4d5e6f…)" in str(caught.value)


def test_a_mismatch_without_a_template_change_blames_the_inputs(recording: Path) -> None:
    edited_prompt = PROMPT.replace("Rule 17: metrics return", "Rule 17: metrics should return")
    with pytest.raises(ReplayMismatch) as caught:
        ReplayBackend(recording).complete(request("draft a metric", prompt=edited_prompt))
    message = str(caught.value)
    assert message.splitlines()[0].endswith(": no template changed: the inputs differ (dataset, code or settings)")
    # The escaped newlines of a long prompt are broken into lines, so the diff shows the one rule that changed.
    assert "-Rule 17: metrics return a finite float or None.\\n" in message.splitlines()
    assert "+Rule 17: metrics should return a finite float or None.\\n" in message.splitlines()


def test_a_long_diff_is_trimmed(recording: Path) -> None:
    other_prompt = "\n".join(f"Completely different line {n} " + "x" * 500 for n in range(200))
    with pytest.raises(ReplayMismatch) as caught:
        ReplayBackend(recording).complete(request("draft a metric", prompt=other_prompt))
    lines = str(caught.value).splitlines()
    assert len(lines) <= 1 + 80 + 1
    assert lines[-1].startswith("… (") and lines[-1].endswith(" more diff lines)")
    assert max(len(line) for line in lines[1:]) <= 241


def test_more_requests_than_recorded_fail(recording: Path) -> None:
    backend = ReplayBackend(recording)
    backend.complete(request("draft a metric"))
    backend.complete(request("repair: ZeroDivisionError"))
    with pytest.raises(ReplayMismatch) as caught:
        backend.complete(request("repair again"))
    assert str(caught.value) == (
        f"replay mismatch at request 2 in {recording}: the recording ends after 2 exchanges; "
        "the loop now makes more requests than when it was recorded"
    )


def test_unused_recordings_fail_in_finish(tmp_path: Path) -> None:
    path = record(
        tmp_path / "three.jsonl",
        (request("one"), reply("1")),
        (request("two"), reply("2")),
        (request("three"), reply("3")),
    )
    backend = ReplayBackend(path)
    backend.complete(request("one"))
    assert [exchange.index for exchange in backend.unused] == [1, 2]
    with pytest.raises(ReplayMismatch) as caught:
        backend.finish()
    assert isinstance(caught.value, UserError)
    assert str(caught.value) == (
        f"2 recorded exchanges in {path} were never requested; "
        "the loop now stops earlier than when it was recorded (first unused: exchange 1)"
    )
    backend.complete(request("two"))
    with pytest.raises(ReplayMismatch, match=r"^1 recorded exchange in .* was never requested"):
        backend.finish()


def test_a_recorded_unreachable_server_replays_as_model_unreachable(tmp_path: Path) -> None:
    path = record(
        tmp_path / "down.jsonl",
        (request("one"), ModelUnreachable("server at http://127.0.0.1:8080/v1 refused the connection")),
        (request("one"), reply("after the retry")),
    )
    backend = ReplayBackend(path)
    with pytest.raises(ModelUnreachable) as caught:
        backend.complete(request("one"))
    assert str(caught.value) == "server at http://127.0.0.1:8080/v1 refused the connection"
    assert backend.complete(request("one")) == reply("after the retry")
    backend.finish()


def test_an_interrupted_recording_cannot_be_replayed_past(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.jsonl"
    with TranscriptWriter(path, TranscriptMeta(backend="b", model="m", mode="chat")) as writer:
        writer.exchange(request("one"), error="KeyboardInterrupt: ")
    with pytest.raises(ReplayMismatch, match="ended in 'KeyboardInterrupt: ', not in a reply"):
        ReplayBackend(path).complete(request("one"))


def test_a_request_holding_a_secret_still_matches_its_scrubbed_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASET_TOKEN", "tok-0123456789abcdef")
    leaky = request("images at https://host/data?token=tok-0123456789abcdef")
    path = record(tmp_path / "leaky.jsonl", (leaky, reply("ok")))
    assert "tok-0123456789abcdef" not in path.read_text(encoding="utf-8")
    backend = ReplayBackend(path)
    assert backend.complete(leaky) == reply("ok")
    backend.finish()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("authoring", "max_repairs", "abc"), "settings.authoring.max_repairs: Input should be a valid integer"),
        (("authoring", "temperature", "hot"), "settings.authoring.temperature: Input should be a valid number"),
        ((None, "extra_key", 1), "settings.extra_key: Extra inputs are not permitted"),
    ],
)
def test_a_meta_line_whose_settings_cannot_rebuild_the_job_is_one_line(
    tmp_path: Path, change: tuple[str | None, str, object], problem: str
) -> None:
    # A wrong type was an internal error (TypeError) later in the loop; a pydantic error a six-line dump.
    from agent.authoring.job import job_settings_from_transcript
    from agent.errors import UserError
    from agent.llm.transcript import read_transcript

    source = Path(__file__).resolve().parents[1] / "transcripts" / "fixture-success-after-two-repairs.jsonl"
    lines = source.read_text().splitlines()
    meta = json.loads(lines[0])
    section, key, value = change
    (meta["settings"][section] if section else meta["settings"])[key] = value
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n")
    with pytest.raises(UserError) as caught:
        job_settings_from_transcript(read_transcript(edited))
    message = str(caught.value)
    assert "\n" not in message and f"the meta line's settings cannot rebuild the job: {problem}" in message
