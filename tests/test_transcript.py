"""Transcripts: written line by line and crash-safe, read back strictly, and never holding a secret."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import UserError
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
from agent.llm.transcript import (
    REDACTED,
    EventLine,
    ExchangeLine,
    RecordingBackend,
    TranscriptMeta,
    TranscriptWriter,
    read_transcript,
    scrub_secrets,
)

REPO = Path(__file__).resolve().parents[1]


def request(text: str = "Write a metric for tiny boxes.", templates: dict[str, str] | None = None) -> ModelRequest:
    return ModelRequest(
        mode="chat",
        messages=(Message(role="system", content="You write metrics."), Message(role="user", content=text)),
        temperature=0.2,
        max_tokens=512,
        templates=templates if templates is not None else {"draft.j2": "a" * 64},
    )


def reply(text: str = "```python\ndef score(image, scene):\n    return 1.0\n```") -> ModelReply:
    return ModelReply(
        text=text, finish_reason="stop", usage=Usage(prompt_tokens=10, completion_tokens=5), model="m", latency_s=0.1
    )


def meta(**overrides: object) -> TranscriptMeta:
    fields: dict[str, object] = {"backend": "queued", "model": "queued-1", "mode": "chat", "idea": "tiny boxes"}
    fields.update(overrides)
    return TranscriptMeta.model_validate(fields)


class QueuedModel:
    """A test model: answers with queued replies (or raises queued exceptions) and keeps the requests."""

    name = "queued"
    model = "queued-1"
    mode = "chat"

    def __init__(self, *queue: ModelReply | BaseException) -> None:
        self.queue = list(queue)
        self.history: list[ModelRequest] = []

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        self.history.append(request)
        item = self.queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return hand_over(item, on_text)


def test_round_trip_keeps_every_line_in_order(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "deep" / "session.jsonl"
    first = meta(templates={"draft.j2": "b" * 64}, settings={"max_repairs": 3})
    with TranscriptWriter(path, first) as writer:
        one = writer.exchange(request(), reply(), latency_s=0.5)
        event = writer.event("sandbox_result", {"scored": 12, "errors": [{"kind": "exception"}]})
        two = writer.exchange(request("again"), error="ModelUnreachable: down", error_kind="unreachable")
        assert writer.next_index == 2

    transcript = read_transcript(path)
    assert transcript.meta == first
    assert transcript.exchanges == (one, two)
    assert transcript.events == (event,)
    assert transcript.lines == (first, one, event, two)
    assert not transcript.torn_tail
    assert transcript.meta.schema_version == 1
    assert transcript.meta.metricsmith_version not in ("", "0+unknown")  # installed in the test environment
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["kind"] for line in raw] == ["meta", "exchange", "event", "exchange"]
    assert raw[0]["created_at"].endswith("Z") and raw[0]["origin"] == "recorded"
    assert raw[3]["reply"] is None and raw[3]["error_kind"] == "unreachable"


def test_writer_refuses_to_overwrite_a_transcript(tmp_path: Path) -> None:
    path = tmp_path / "session.jsonl"
    TranscriptWriter(path, meta()).close()
    with pytest.raises(UserError, match="already exists"):
        TranscriptWriter(path, meta())
    assert len(read_transcript(path).lines) == 1


def test_lines_are_on_disk_before_the_writer_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "session.jsonl"
    writer = TranscriptWriter(path, meta())
    writer.exchange(request(), reply())
    writer.event("note", {"text": "still open"})
    # No close(): what a reader sees now is what a crash would leave.
    transcript = read_transcript(path)
    assert len(transcript.exchanges) == 1 and transcript.events[0].data == {"text": "still open"}
    writer.close()


def test_a_killed_session_leaves_every_completed_line_readable(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from agent.llm.model import Message, ModelReply, ModelRequest, Usage
        from agent.llm.transcript import TranscriptMeta, TranscriptWriter

        writer = TranscriptWriter(Path({str(path)!r}), TranscriptMeta(backend="b", model="m", mode="chat"))
        for i in range(3):
            req = ModelRequest(mode="chat", messages=(Message(role="user", content=f"q{{i}}"),),
                               temperature=0.0, max_tokens=8)
            rep = ModelReply(text=f"a{{i}}", finish_reason="stop",
                             usage=Usage(prompt_tokens=1, completion_tokens=1), model="m", latency_s=0.0)
            writer.exchange(req, rep)
        writer.event("note", {{"text": "about to die"}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr
    transcript = read_transcript(path)
    assert [e.reply.text for e in transcript.exchanges if e.reply] == ["a0", "a1", "a2"]
    assert [e.index for e in transcript.exchanges] == [0, 1, 2]
    assert transcript.events[-1].data == {"text": "about to die"}


def test_a_torn_last_line_is_dropped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    with TranscriptWriter(path, meta()) as writer:
        writer.exchange(request(), reply())
    with path.open("ab") as handle:
        handle.write(b'{"kind":"exchange","index":1,"requ')
    transcript = read_transcript(path)
    assert transcript.torn_tail
    assert len(transcript.exchanges) == 1


# --- secrets -----------------------------------------------------------------------------------------

SECRET = "pl4nted-S3CRET-value-0042"
OPENAI_KEY = "sk-proj-AbCdEf0123456789xyzXYZ"
BEARER = "eyJhbGciOiJIUzI1NiJ9.payload.signature"


def test_no_secret_reaches_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_API_KEY", SECRET)
    path = tmp_path / "secret.jsonl"
    leaky_meta = meta(idea=f"use {SECRET}", settings={"api_key": SECRET, "nested": [{"auth": f"Bearer {BEARER}"}]})
    with TranscriptWriter(path, leaky_meta) as writer:
        writer.exchange(request(f"my key is {SECRET} and {OPENAI_KEY}"), reply(f"ok {OPENAI_KEY}"), latency_s=0.1)
        writer.exchange(request("x"), error=f"ModelUnreachable: 401 for Authorization: Bearer {BEARER}")
        writer.event("user_input", {"text": f"try {SECRET}", SECRET: "as a key", "list": [OPENAI_KEY]})
        writer.event("note", {"header": f"Authorization: Basic {SECRET}"})

    raw = path.read_text(encoding="utf-8")
    for secret in (SECRET, OPENAI_KEY, BEARER):
        assert secret not in raw
    assert raw.count(REDACTED) >= 9
    transcript = read_transcript(path)  # still a valid transcript after scrubbing
    assert transcript.meta.settings == {"api_key": REDACTED, "nested": [{"auth": f"Bearer {REDACTED}"}]}
    assert transcript.exchanges[0].request.messages[1].content == f"my key is {REDACTED} and {REDACTED}"
    assert transcript.exchanges[1].error == f"ModelUnreachable: 401 for Authorization: {REDACTED}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key={SECRET}.", f"key={REDACTED}."),
        (f"export OPENAI_API_KEY={OPENAI_KEY}", f"export OPENAI_API_KEY={REDACTED}"),
        (f"curl -H 'Authorization: Bearer {BEARER}' url", f"curl -H 'Authorization: {REDACTED}"),
        (f'{{"Authorization": "Bearer {BEARER}"}}', f'{{"Authorization": {REDACTED}'),
        (f"token Bearer {BEARER} end", f"token Bearer {REDACTED} end"),
        ("x-api-key: abcdefgh12345678", f"x-api-key: {REDACTED}"),
        # A value already redacted stays, and so does what follows it: an error line's advice was cut off.
        (
            f"(server: Authorization: {REDACTED}), after 5 attempts",
            f"(server: Authorization: {REDACTED}), after 5 attempts",
        ),
        ("hf_" + "a1" * 17, REDACTED),
        # Credentials in a URL (a --base-url in an error message): the user info, and secret-named parameters.
        ("at http://admin:pw-S3cret@127.0.0.1:9/v1 down", f"at http://{REDACTED}@127.0.0.1:9/v1 down"),
        ("https://tok3n@host/x", f"https://{REDACTED}@host/x"),
        ("http://h/v1?api_key=Q5ecret&model=m#f", f"http://h/v1?api_key={REDACTED}&model=m#f"),
        ("http://h/v1?model=m&token=abc", f"http://h/v1?model=m&token={REDACTED}"),
        # Not secrets: a short env value, ordinary words and code, sk-learn, an @ in a URL's path or an address.
        ("see https://example.com/a@b or a@b.com", "see https://example.com/a@b or a@b.com"),
        ("value short1", "value short1"),
        ("import sklearn  # sk-learn, ask-me-anything-please", "import sklearn  # sk-learn, ask-me-anything-please"),
        ("the bearer of bad news", "the bearer of bad news"),
        ("NOT_SENSITIVE value is public-value-123", "NOT_SENSITIVE value is public-value-123"),
    ],
)
def test_scrub_secrets_on_strings(text: str, expected: str) -> None:
    environ = {"SERVICE_TOKEN": SECRET, "SHORT_KEY": "short1", "NOT_SENSITIVE": "public-value-123", "PATH": "/bin"}
    assert scrub_secrets(text, environ) == expected


def test_scrub_secrets_walks_structures_and_is_idempotent() -> None:
    environ = {"DB_PASSWORD": SECRET, "GITHUB_AUTH": SECRET + "-longer"}
    obj = {"a": [SECRET, (f"x{SECRET}-longer", 3)], SECRET: {"n": None, "f": 1.5, "b": True}}
    once = scrub_secrets(obj, environ)
    assert once == {"a": [REDACTED, [f"x{REDACTED}", 3]], REDACTED: {"n": None, "f": 1.5, "b": True}}
    assert scrub_secrets(once, environ) == once
    assert obj["a"][0] == SECRET  # the input is left alone


# --- reading errors ----------------------------------------------------------------------------------


def _lines(tmp_path: Path) -> list[str]:
    """A valid transcript's lines, as text, to break one at a time."""
    path = tmp_path / "valid.jsonl"
    with TranscriptWriter(path, meta()) as writer:
        writer.exchange(request(), reply())
        writer.event("note", {})
        writer.exchange(request("two"), reply())
    return path.read_text(encoding="utf-8").splitlines()


Breaker = Callable[[list[str]], list[str]]


def _breakers() -> dict[str, tuple[Breaker, int, str]]:
    def set_field(number: int, **fields: object) -> Breaker:
        def apply(lines: list[str]) -> list[str]:
            obj = json.loads(lines[number - 1])
            obj.update(fields)
            return [*lines[: number - 1], json.dumps(obj), *lines[number:]]

        return apply

    return {
        "malformed": (lambda lines: [lines[0], "{not json", *lines[2:]], 2, "not a JSON object"),
        "array": (lambda lines: [lines[0], "[1, 2]", *lines[2:]], 2, "not a JSON object (found list)"),
        "missing meta": (lambda lines: lines[1:], 1, "the first line must be the meta line, found an exchange line"),
        "second meta": (lambda lines: [*lines, lines[0]], 5, "a second meta line"),
        "index gap": (set_field(4, index=2), 4, "exchange index 2 where 1 was expected"),
        "schema version": (set_field(1, schema_version=2), 1, "schema version 2 is not supported"),
        "unknown kind": (set_field(3, kind="chatter"), 3, "unknown line kind 'chatter'"),
        "reply and error": (set_field(2, error="boom"), 2, "bad exchange line"),
        "bad mode": (set_field(1, mode="poetry"), 1, "bad meta line: mode:"),
        "extra field": (set_field(3, colour="red"), 3, "bad event line: colour: Extra inputs"),
    }


@pytest.mark.parametrize("case", list(_breakers()))
def test_malformed_transcripts_name_the_file_and_line(tmp_path: Path, case: str) -> None:
    breaker, number, message = _breakers()[case]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(breaker(_lines(tmp_path))) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_transcript(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:{number}: "), text
    assert message in text
    assert "\n" not in text


def test_empty_and_missing_files_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty\.jsonl:1: the transcript is empty"):
        read_transcript(tmp_path / "empty.jsonl")
    with pytest.raises(UserError, match="no such transcript file"):
        read_transcript(tmp_path / "absent.jsonl")


# --- recording ---------------------------------------------------------------------------------------


def test_recording_backend_writes_each_exchange_as_it_happens(tmp_path: Path) -> None:
    path = tmp_path / "recorded.jsonl"
    inner = QueuedModel(reply("first"), ModelUnreachable("connection refused at 127.0.0.1:9"), reply("third"))
    with TranscriptWriter(path, TranscriptMeta.for_backend(inner, templates={"draft.j2": "c" * 64})) as writer:
        backend = RecordingBackend(inner, writer)
        assert isinstance(backend, ModelBackend)
        assert (backend.name, backend.model, backend.mode) == ("queued", "queued-1", "chat")

        assert backend.complete(request("one")).text == "first"
        assert len(read_transcript(path).exchanges) == 1  # on disk before complete() returned
        with pytest.raises(ModelUnreachable, match="connection refused"):
            backend.complete(request("two"))
        assert backend.complete(request("three")).text == "third"

    transcript = read_transcript(path)
    assert (transcript.meta.backend, transcript.meta.model, transcript.meta.templates) == (
        "queued",
        "queued-1",
        {"draft.j2": "c" * 64},
    )
    assert [e.request for e in transcript.exchanges] == inner.history
    first, failed, third = transcript.exchanges
    assert first.reply == reply("first") and third.reply == reply("third")
    assert failed == ExchangeLine(
        index=1,
        request=request("two"),
        error="ModelUnreachable: connection refused at 127.0.0.1:9",
        error_kind="unreachable",
        latency_s=failed.latency_s,
    )


def test_an_interrupted_exchange_is_recorded_then_reraised(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.jsonl"
    with TranscriptWriter(path, meta()) as writer:
        backend = RecordingBackend(QueuedModel(KeyboardInterrupt()), writer)
        with pytest.raises(KeyboardInterrupt):
            backend.complete(request())
    (line,) = read_transcript(path).exchanges
    assert (line.reply, line.error, line.error_kind) == (None, "KeyboardInterrupt: ", None)


def test_event_lines_carry_a_utc_time(tmp_path: Path) -> None:
    with TranscriptWriter(tmp_path / "t.jsonl", meta()) as writer:
        line = writer.event("decision", {"action": "repair"})
    assert isinstance(line, EventLine)
    assert line.at.utcoffset() is not None and line.at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert os.stat(tmp_path / "t.jsonl").st_mode & 0o777 == 0o600
