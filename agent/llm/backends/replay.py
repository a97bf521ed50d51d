"""The replay backend: answers from a transcript, strictly in order, and says exactly why it can't.

`ReplayBackend` implements the same `ModelBackend` interface as the real backends, so a recorded
session runs through the very code path that produced it, without a model. Matching is strict and
sequential: request i must equal recorded request i as normalised JSON (`ModelRequest.normalised()`).
There are no headers at this level, so nothing needs ignoring.

Both sides go through `scrub_secrets` before they are compared, because the recorded side was
scrubbed when it was written; a request that carried a secret still matches its own recording, and
the diff in a mismatch message never shows one.

A mismatch is the user's to act on (a template or an input changed since the recording), so
`ReplayMismatch` is a `UserError`. Its message is several lines on purpose: a one-line summary naming
the request index and the changed template(s), then a trimmed unified diff of the two requests.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from agent.errors import UserError
from agent.llm.model import Mode, ModelReply, ModelRequest, ModelUnreachable, TextSink, hand_over
from agent.llm.transcript import ExchangeLine, Transcript, read_transcript, scrub_secrets

__all__ = ["ReplayBackend", "ReplayMismatch"]

_SHA_SHOWN = 6
_DIFF_MAX_LINES = 80
_DIFF_MAX_LINE_CHARS = 240
_UNREACHABLE_PREFIX = "ModelUnreachable: "


class ReplayMismatch(UserError):
    """The session no longer matches its recording: a request differs, or there are too many or too few."""


class ReplayBackend:
    """A ModelBackend that returns recorded replies for requests identical to the recorded ones."""

    def __init__(self, transcript: Transcript | Path) -> None:
        self.transcript = transcript if isinstance(transcript, Transcript) else read_transcript(transcript)
        self._position = 0

    @property
    def name(self) -> str:
        return "replay"

    @property
    def model(self) -> str:
        return self.transcript.meta.model

    @property
    def mode(self) -> Mode:
        return self.transcript.meta.mode

    @property
    def unused(self) -> tuple[ExchangeLine, ...]:
        """The recorded exchanges not yet requested."""
        return self.transcript.exchanges[self._position :]

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        exchanges = self.transcript.exchanges
        index = self._position
        if index >= len(exchanges):
            why = (
                "its last line is torn (the recording was killed while writing it), so the session it recorded "
                "did not end"
                if self.transcript.torn_tail
                else "the loop now makes more requests than when it was recorded"
            )
            raise ReplayMismatch(
                f"replay mismatch at request {index}{self._source()}: the recording ends after "
                f"{_exchanges(len(exchanges))}; {why}"
            )
        recorded = exchanges[index]
        recorded_text, new_text = _comparable(recorded.request), _comparable(request)
        if recorded_text != new_text:
            raise ReplayMismatch(
                f"replay mismatch at request {index}{self._source()}: "
                f"{_template_changes(recorded.request.templates, request.templates)}\n"
                f"{_diff(recorded_text, new_text, index)}"
            )
        # Advance only on a match, so `unused` still counts a request that failed to match.
        self._position += 1
        if recorded.reply is not None:
            return hand_over(recorded.reply, on_text)
        message = recorded.error or ""
        if recorded.error_kind == "unreachable":
            raise ModelUnreachable(message.removeprefix(_UNREACHABLE_PREFIX))
        raise ReplayMismatch(
            f"recorded exchange {index}{self._source()} ended in {message!r}, not in a reply; "
            "the recording cannot be replayed past it"
        )

    def finish(self) -> None:
        """Raise ReplayMismatch if recorded exchanges were never requested; call when the session ends."""
        left = len(self.unused)
        if left:
            verb = "was" if left == 1 else "were"
            raise ReplayMismatch(
                f"{_exchanges(left, 'recorded exchange')}{self._source()} {verb} never requested; "
                f"the loop now stops earlier than when it was recorded (first unused: exchange {self._position})"
            )

    def _source(self) -> str:
        return f" in {self.transcript.path}" if self.transcript.path is not None else ""


def _exchanges(count: int, noun: str = "exchange") -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _comparable(request: ModelRequest) -> str:
    # The same canonical form as ModelRequest.normalised(), after scrubbing (see the module docstring).
    return json.dumps(scrub_secrets(request.model_dump(mode="json")), sort_keys=True, ensure_ascii=False, indent=1)


def _short(sha: str) -> str:
    return sha[:_SHA_SHOWN] + "…"


def _template_changes(recorded: dict[str, str], new: dict[str, str]) -> str:
    """One sentence: which templates changed between the recorded request and the new one."""
    changes: list[str] = []
    for name in sorted(recorded.keys() | new.keys()):
        before, after = recorded.get(name), new.get(name)
        if before == after:
            continue
        if before is None:
            changes.append(f"template {name} is new since the recording (sha {_short(after or '')})")
        elif after is None:
            changes.append(f"template {name} is no longer used (it was sha {_short(before)})")
        else:
            changes.append(f"template {name} changed since the recording: sha {_short(before)} → {_short(after)}")
    if not changes:
        return "no template changed: the inputs differ (dataset, code or settings)"
    return "; ".join(changes) + "; re-record the session to accept the change"


def _diff(recorded: str, new: str, index: int) -> str:
    """A unified diff of the two requests, cut to a readable size."""
    lines = list(
        difflib.unified_diff(
            _display_lines(recorded),
            _display_lines(new),
            fromfile=f"recorded request {index}",
            tofile=f"new request {index}",
            lineterm="",
        )
    )
    shown = [line if len(line) <= _DIFF_MAX_LINE_CHARS else line[:_DIFF_MAX_LINE_CHARS] + "…" for line in lines]
    if len(shown) > _DIFF_MAX_LINES:
        hidden = len(shown) - _DIFF_MAX_LINES
        shown = [*shown[:_DIFF_MAX_LINES], f"… ({hidden} more diff lines)"]
    return "\n".join(shown)


def _display_lines(text: str) -> list[str]:
    # A message's content is one JSON string, so one line of the JSON text: a one-word change in a long
    # prompt would show as two enormous lines. Breaking after each escaped newline keeps the text exactly
    # the normalised JSON, and makes the diff point at the prompt line that changed.
    return text.replace("\\n", "\\n\n").split("\n")
