"""Session transcripts: one JSON Lines file per authoring session, written as it happens.

A transcript is the record of everything the model was asked and answered, plus what the loop did
with each answer. It is written line by line (each line flushed and fsync'ed before the call that
produced it returns), so a crash, SIGKILL or Ctrl-C loses nothing already exchanged, and it is what
`ReplayBackend` (agent/llm/backends/replay.py) replays.

File format, schema version 1
=============================

The file is UTF-8 text. Each line is one JSON object terminated by "\\n"; lines are split on "\\n"
only (a JSON string may legitimately hold U+2028). Blank lines are ignored. Every object has a
`"kind"` member that says which of the three line kinds it is; unknown members are an error.

1. `meta`: exactly one, and it is line 1.

   - `kind`: `"meta"`
   - `schema_version`: integer, `1`. A reader refuses any other version.
   - `metricsmith_version`: string, the installed package version, or `"0+unknown"`.
   - `backend`: string, the backend's name (`"openai"`, `"local"`, a test model's name).
   - `model`: string, the model identifier as the backend knows it.
   - `mode`: `"chat"` or `"completion"`.
   - `templates`: object, prompt template name -> sha256 hex of its source, for every template
     known when the session started.
   - `origin`: `"recorded"` (written by a real session) or `"fixture"` (written by hand or by a test).
   - `created_at`: string, ISO 8601 date-time with a UTC offset, e.g. `"2025-05-01T12:00:00Z"`.
   - `idea`: string or null, the user's idea for the metric.
   - `settings`: object, free-form (e.g. `{"max_repairs": 3}`); `{}` when absent.

2. `exchange`: one per `ModelBackend.complete()` call, in call order.

   - `kind`: `"exchange"`
   - `index`: integer, 0 for the first exchange, then 1, 2, ... with no gaps.
   - `request`: object, `agent.llm.model.ModelRequest` in its JSON form.
   - `reply`: object (`agent.llm.model.ModelReply`) or null when the call failed.
   - `error`: string or null, `"ExceptionName: message"` when the call failed.
   - `error_kind`: `"unreachable"` (the backend raised `ModelUnreachable`; replay raises it again)
     or null (the call succeeded, or was ended by something else, e.g. `"KeyboardInterrupt: "`).
   - `latency_s`: number >= 0, wall time of the call in seconds, retries included.

   Exactly one of `reply` and `error` is non-null, and `error_kind` is null whenever `error` is.

3. `event`: anything the loop wants on the record, interleaved with exchanges in the order it
   happened.

   - `kind`: `"event"`
   - `event`: non-empty string. The loop uses `"extraction"`, `"sandbox_result"`, `"validation"`,
     `"decision"`, `"user_input"`, `"note"` and `"outcome"`; readers accept any name.
   - `data`: object, free-form JSON.
   - `at`: string, ISO 8601 date-time with a UTC offset.

Secrets never reach the file: every line goes through `scrub_secrets` before it is written, which
replaces the values of secret-looking environment variables (names containing KEY, TOKEN, SECRET,
PASSWORD or AUTH; values of 8 characters or more), `sk-...`-style API keys, `Bearer <token>` and
`Authorization:` header values with `[REDACTED]`.

A session killed in the middle of writing a line can leave a final line with no "\\n" that does not
parse. The reader drops such a torn tail (and says so in `Transcript.torn_tail`) rather than
refusing the whole file; anything else malformed is a `UserError` naming the file and line.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from agent.errors import UserError
from agent.llm.model import (
    ForwardingBackend,
    Mode,
    ModelBackend,
    ModelReply,
    ModelRequest,
    ModelUnreachable,
    TextSink,
)
from agent.llm.secrets import REDACTED, scrub_secrets, scrub_text

__all__ = [
    "REDACTED",
    "SCHEMA_VERSION",
    "EventLine",
    "ExchangeLine",
    "RecordingBackend",
    "Transcript",
    "TranscriptLine",
    "TranscriptMeta",
    "TranscriptWriter",
    "append_event",
    "read_transcript",
    "scrub_secrets",
    "scrub_text",
]

SCHEMA_VERSION = 1


def _package_version() -> str:
    try:
        return importlib.metadata.version("metricsmith")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _now() -> datetime:
    return datetime.now(UTC)


class _Line(BaseModel):
    # Frozen and strict: a transcript is a record, and a typo'd member is a bug, not an extension.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TranscriptMeta(_Line):
    """Line 1: what produced the session. Version and timestamp fill themselves in."""

    kind: Literal["meta"] = "meta"
    schema_version: Literal[1] = SCHEMA_VERSION
    metricsmith_version: str = Field(default_factory=_package_version)
    backend: str
    model: str
    mode: Mode
    templates: dict[str, str] = Field(default_factory=dict)
    origin: Literal["recorded", "fixture"] = "recorded"
    created_at: AwareDatetime = Field(default_factory=_now)
    idea: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def for_backend(
        cls,
        backend: ModelBackend,
        *,
        templates: Mapping[str, str],
        idea: str | None = None,
        settings: Mapping[str, Any] | None = None,
        origin: Literal["recorded", "fixture"] = "recorded",
    ) -> TranscriptMeta:
        """The meta line for a session about to run on `backend`."""
        return cls(
            backend=backend.name,
            model=backend.model,
            mode=backend.mode,
            templates=dict(templates),
            origin=origin,
            idea=idea,
            settings=dict(settings or {}),
        )


class ExchangeLine(_Line):
    """One `complete()` call: the request and either its reply or its error."""

    kind: Literal["exchange"] = "exchange"
    index: int = Field(ge=0)
    request: ModelRequest
    reply: ModelReply | None = None
    error: str | None = None
    error_kind: Literal["unreachable"] | None = None
    latency_s: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _reply_xor_error(self) -> Self:
        if (self.reply is None) == (self.error is None):
            raise ValueError("exactly one of reply and error must be set")
        if self.error_kind is not None and self.error is None:
            raise ValueError("error_kind needs an error")
        return self


class EventLine(_Line):
    """Something the loop did or saw, on the record between exchanges."""

    kind: Literal["event"] = "event"
    event: str = Field(min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)
    at: AwareDatetime = Field(default_factory=_now)


TranscriptLine = Annotated[TranscriptMeta | ExchangeLine | EventLine, Field(discriminator="kind")]
_LINE = TypeAdapter(TranscriptLine)


# --- writing ----------------------------------------------------------------------------------------


def _encode(line: TranscriptMeta | ExchangeLine | EventLine) -> bytes:
    # mode="json" turns datetimes into ISO strings and non-finite floats into null, so allow_nan=False
    # can only trip on a bug.
    body = scrub_secrets(line.model_dump(mode="json"))
    return (json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


class TranscriptWriter:
    """Append-only transcript file: the meta line on creation, then one line per call, each fsync'ed.

    The file must not exist yet: a transcript is a record, and silently overwriting a recording is the
    one mistake it must not make. Safe to call from several threads.
    """

    def __init__(self, path: Path, meta: TranscriptMeta) -> None:
        self.path = Path(path)
        self.meta = meta
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except FileExistsError:
            raise UserError(f"{self.path}: a transcript already exists there; choose another path") from None
        self._lock = threading.Lock()
        self._next_index = 0
        self._write(meta)
        # The file's directory entry must survive a crash too, not only its contents.
        _fsync_directory(self.path.parent)

    @property
    def next_index(self) -> int:
        """The index the next exchange line will get (= the number of exchanges written)."""
        return self._next_index

    def exchange(
        self,
        request: ModelRequest,
        reply: ModelReply | None = None,
        *,
        error: str | None = None,
        error_kind: Literal["unreachable"] | None = None,
        latency_s: float = 0.0,
    ) -> ExchangeLine:
        """Append one exchange line, numbered in call order, and return it (unscrubbed)."""
        with self._lock:
            line = ExchangeLine(
                index=self._next_index,
                request=request,
                reply=reply,
                error=error,
                error_kind=error_kind,
                latency_s=max(0.0, latency_s),
            )
            self._write_locked(line)
            self._next_index += 1
        return line

    def event(self, event: str, data: Mapping[str, Any] | None = None) -> EventLine:
        """Append one event line and return it (unscrubbed)."""
        line = EventLine(event=event, data=dict(data or {}))
        self._write(line)
        return line

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _write(self, line: TranscriptMeta | ExchangeLine | EventLine) -> None:
        with self._lock:
            self._write_locked(line)

    def _write_locked(self, line: TranscriptMeta | ExchangeLine | EventLine) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: transcript writer is closed")
        data = _encode(line)
        # O_APPEND plus a loop over os.write: no userspace buffer can hold back a line that was "written".
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)


def append_event(path: Path, event: str, data: Mapping[str, Any] | None = None) -> EventLine:
    """Append one event to a finished transcript (a decision taken after the session), fsync'ed.

    The file must already be a transcript: its first line is read back as the meta line first.
    """
    with open(path, "rb") as existing:
        TranscriptMeta.model_validate_json(existing.readline())
    line = EventLine(event=event, data=dict(data or {}))
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(descriptor, _encode(line))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return line


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the file itself is still fsync'ed
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transcript:
    """A transcript read back: the meta line, exchanges and events in file order, and all lines."""

    path: Path | None
    meta: TranscriptMeta
    exchanges: tuple[ExchangeLine, ...]
    events: tuple[EventLine, ...]
    lines: tuple[TranscriptMeta | ExchangeLine | EventLine, ...]
    # True when the last line was an incomplete write from a killed session and was dropped.
    torn_tail: bool = False


def read_transcript(path: Path) -> Transcript:
    """Read and check a transcript. Anything malformed raises UserError naming the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such transcript file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the transcript: {error.strerror or error}") from None

    chunks = raw.split(b"\n")
    # Everything before the last "\n" was written whole; a non-empty remainder is an unterminated last line.
    tail = chunks.pop()
    numbered = [(number, chunk, True) for number, chunk in enumerate(chunks, start=1)]
    if tail.strip():
        numbered.append((len(chunks) + 1, tail, False))

    lines: list[TranscriptMeta | ExchangeLine | EventLine] = []
    torn_tail = False
    exchanges = 0
    for number, chunk, terminated in numbered:
        if not chunk.strip():
            continue
        try:
            line = _parse_line(path, number, chunk)
        except UserError:
            if not terminated and lines:
                torn_tail = True
                break
            raise
        _check_order(path, number, line, first=not lines, expected_index=exchanges)
        lines.append(line)
        exchanges += isinstance(line, ExchangeLine)

    if not lines:
        raise UserError(f"{path}:1: the transcript is empty; it must start with a meta line")
    meta = lines[0]
    assert isinstance(meta, TranscriptMeta)  # _check_order guarantees it
    return Transcript(
        path=path,
        meta=meta,
        exchanges=tuple(line for line in lines if isinstance(line, ExchangeLine)),
        events=tuple(line for line in lines if isinstance(line, EventLine)),
        lines=tuple(lines),
        torn_tail=torn_tail,
    )


def _parse_line(path: Path, number: int, chunk: bytes) -> TranscriptMeta | ExchangeLine | EventLine:
    where = f"{path}:{number}"
    try:
        obj = json.loads(chunk)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{where}: not a JSON object ({error})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a JSON object (found {type(obj).__name__})")
    kind = obj.get("kind")
    if kind not in ("meta", "exchange", "event"):
        raise UserError(f"{where}: unknown line kind {kind!r}; expected 'meta', 'exchange' or 'event'")
    # Checked before the full validation so that a newer file gets this message, not a field-level one.
    if kind == "meta" and obj.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{where}: transcript schema version {obj.get('schema_version')!r} is not supported; "
            f"this metricsmith ({_package_version()}) reads version {SCHEMA_VERSION}"
        )
    try:
        return _LINE.validate_python(obj)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"][1:]) or "line"
        more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
        raise UserError(f"{where}: bad {kind} line: {location}: {first['msg']}{more}") from None


def _check_order(
    path: Path, number: int, line: TranscriptMeta | ExchangeLine | EventLine, *, first: bool, expected_index: int
) -> None:
    where = f"{path}:{number}"
    if first and not isinstance(line, TranscriptMeta):
        raise UserError(f"{where}: the first line must be the meta line, found an {line.kind} line")
    if not first and isinstance(line, TranscriptMeta):
        raise UserError(f"{where}: a second meta line; a transcript has exactly one, on its first line")
    if isinstance(line, ExchangeLine) and line.index != expected_index:
        raise UserError(
            f"{where}: exchange index {line.index} where {expected_index} was expected; "
            "exchanges are numbered 0, 1, 2, ... in file order"
        )


# --- recording --------------------------------------------------------------------------------------


class RecordingBackend(ForwardingBackend):
    """A ModelBackend that forwards to `inner` and writes every exchange, failed ones included."""

    def __init__(self, inner: ModelBackend, writer: TranscriptWriter) -> None:
        super().__init__(inner)
        self.writer = writer

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        started = time.monotonic()
        try:
            reply = self.inner.complete(request, on_text)
        except ModelUnreachable as error:
            self.writer.exchange(
                request,
                error=f"ModelUnreachable: {error}",
                error_kind="unreachable",
                latency_s=time.monotonic() - started,
            )
            raise
        except BaseException as error:
            # Ctrl-C or a bug in the backend: still on the record, so the transcript shows where it ended.
            self.writer.exchange(
                request, error=f"{type(error).__name__}: {error}", latency_s=time.monotonic() - started
            )
            raise
        self.writer.exchange(request, reply, latency_s=time.monotonic() - started)
        return reply
