"""Replaying a recorded `metricsmith chat` session: its typed lines fed through the dispatcher again.

A chat transcript (meta settings `"kind": "chat"`, see agent.sessions.chat) is re-run by `replay_chat`: the
dataset is rebuilt from the meta line, the replay backend answers the model requests (strictly in
order, as for `author` sessions), the recorded `user_input` lines go through `ChatSession.dispatch`
one by one, and the editor writes back the code recorded in each `editor` event. The outcome
compared is `session_outcome`: the code of each candidate produced, and each decision, in order.

Known limit: a command cancelled with Ctrl-C during a model call replays as cancelled at the same
call (`InterruptibleReplay`); one cancelled during sandbox validation cannot be cut at the same
point, so its replay runs on and reports a different outcome.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from agent.authoring.job import TRANSCRIPT_NAME, authoring_settings, materialise
from agent.errors import UserError
from agent.llm.backends.replay import ReplayBackend, ReplayMismatch
from agent.llm.model import ForwardingBackend, ModelReply, ModelRequest, TextSink
from agent.llm.transcript import Transcript, read_transcript
from agent.metrics.library import copy_pinned_versions, default_library_dir
from agent.review.editing import Editor
from agent.sessions.chat import ChatSession, ChatSettings, ChatSetup

__all__ = ["InterruptibleReplay", "is_chat_transcript", "replay_chat", "session_outcome"]


class InterruptibleReplay(ForwardingBackend):
    """The replay backend, except that an exchange Ctrl-C ended when recorded ends the same way again."""

    inner: ReplayBackend

    def __init__(self, inner: ReplayBackend) -> None:
        super().__init__(inner)

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        left = len(self.inner.unused)
        try:
            return self.inner.complete(request, on_text)
        except ReplayMismatch:
            interrupted = left and (self.inner.transcript.exchanges[-left].error or "").startswith("KeyboardInterrupt")
            if interrupted and len(self.inner.unused) < left:  # it matched, and was cancelled when recorded
                raise KeyboardInterrupt from None
            raise

    def finish(self) -> None:
        self.inner.finish()


def is_chat_transcript(transcript: Transcript) -> bool:
    return transcript.meta.settings.get("kind") == "chat"


def session_outcome(transcript: Transcript) -> dict[str, list[Any]]:
    """What a chat session came to: the code of each candidate it produced, and each decision, in order."""
    return {
        "candidates": [event.data.get("code_sha256") for event in transcript.events if event.event == "candidate"],
        "decisions": [
            {key: event.data.get(key) for key in ("action", "candidate", "code_sha256")}
            for event in transcript.events
            if event.event == "decision"
        ],
    }


def _replayed_editor(codes: Iterable[str | None]) -> Editor:
    """An editor that makes the recorded edits again, in order (None: the user saved no change)."""
    queue = list(codes)

    def edit(path: Path) -> None:
        if not queue:
            raise ReplayMismatch("the session opens the editor more often than when it was recorded")
        code = queue.pop(0)
        if code is not None:
            path.write_text(code, encoding="utf-8")

    return edit


def replay_chat(
    transcript: Transcript,
    console: Console,
    *,
    out: Path | None = None,
    annotations: Path | None = None,
    workers: int | None = None,
    library: Path | None = None,
) -> bool:
    """Feed a recorded chat session's input through the dispatcher again, offline; True when the outcome is the same.

    Promotions go into a library inside the replay's run directory, never into yours. The library
    versions the recording pinned are copied into it first, from `library` (default: yours).
    """
    try:
        settings = ChatSettings.model_validate(transcript.meta.settings)
    except ValueError as error:
        raise UserError(f"{transcript.path}: the meta line's settings cannot rebuild the session: {error}") from None
    if annotations is not None:
        data, images, errors = annotations, None, None
    else:
        data, images, errors = materialise(settings.dataset)
    run_dir = out or Path(tempfile.mkdtemp(prefix="metricsmith-replay-"))
    backend = ReplayBackend(transcript)
    setup = ChatSetup(
        annotations=data,
        run_dir=run_dir,
        backend=InterruptibleReplay(backend),
        images=images,
        description=settings.description,
        errors=errors,
        settings=authoring_settings(settings.authoring),
        validation_size=settings.validation_size,
        library=run_dir / "library",
        pinned_library=tuple(settings.library),
        workers=workers,
        origin=transcript.meta.origin,
    )
    lines: Sequence[str] = [event.data["line"] for event in transcript.events if event.event == "user_input"]
    edits = [event.data.get("code") for event in transcript.events if event.event == "editor"]
    with ChatSession(setup, console, editor=_replayed_editor(edits)) as session:
        # After the session claimed the (empty) run directory: the pinned versions, checked, go into its library.
        copy_pinned_versions(settings.library, default_library_dir(library), run_dir / "library")
        for line in lines:
            console.print(f"[bold]chat>[/] {escape(line)}", markup=True)
            if not session.dispatch(line):
                break
    backend.finish()
    recorded, replayed = session_outcome(transcript), session_outcome(read_transcript(run_dir / TRANSCRIPT_NAME))
    if recorded != replayed:
        console.print(
            f"[red]different outcome[/]: recorded {escape(str(recorded))}, replayed {escape(str(replayed))}",
            markup=True,
        )
        return False
    console.print(
        f"same outcome as recorded: candidates {len(recorded['candidates'])}, decisions {len(recorded['decisions'])} "
        f"(replayed in {run_dir})"
    )
    return True
