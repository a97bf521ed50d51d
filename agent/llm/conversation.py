"""The conversation manager: the system prompt and the turns, fitted to a token budget on request.

The loop adds one `Turn` per message it sends or receives. Each turn carries, besides its text, a
`kind` (what it is: "idea", "code", "failure", "repair_request", "format_error", "note", ...) and a
one-line `summary` that can stand in for it once it is old, e.g.
"[earlier draft 2 (sha 1a2b3c) failed: ZeroDivisionError in score line 12]".

`messages(budget_tokens)` builds the message list. Within the budget everything is sent whole. Over
it, the oldest turns are shortened first, in this order, until the list fits:

1. superseded code and old failure detail (kinds "code", "failure", "repair_request",
   "format_error"), oldest first, are replaced by their summaries;
2. then any other old turn ("note", a later "idea", ...), oldest first, by its summary;
3. then the oldest turns are dropped altogether, a turn together with the next one when that one
   answers it (a draft's note with the note on how it failed), until the list fits.

Never shortened or dropped: the system prompt, the first user turn (the request that started the
session), the latest "code" turn, the latest "failure" turn, and the last turn (what the model is
being asked to answer right now). If those alone exceed the budget the list is returned over budget:
cutting them would leave the model nothing to work from, so the caller decides (a fresh draft, a
smaller max_tokens).

Adjacent turns with the same role are joined into one message (a blank line between them), so after
the system prompt the list always alternates between user and assistant: some chat templates
(Gemma, Llama 2) reject anything else, and dropping a turn could otherwise leave two in a row.

Pure and deterministic: the same turns and budget give the same messages, which replay relies on.
Token counts are `agent.llm.model.estimate_tokens` estimates plus a small per-message overhead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from agent.llm.model import Message, estimate_tokens

__all__ = ["MESSAGE_OVERHEAD_TOKENS", "Conversation", "Turn", "count_tokens"]

# Role markers and separators cost a few tokens per message on every chat template we know of.
MESSAGE_OVERHEAD_TOKENS = 4

# The bulky kinds, summarised before anything else: old code and tracebacks are what a repair loop piles up.
_SUMMARISE_FIRST = frozenset({"code", "failure", "repair_request", "format_error"})

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One message of the conversation, with what it is and how to say it in one line."""

    role: Role
    content: str
    kind: str
    summary: str | None = None

    @property
    def note(self) -> str:
        """The one-line stand-in for this turn once it is old."""
        return self.summary if self.summary is not None else f"[earlier {self.kind} omitted]"


def count_tokens(messages: Iterable[Message]) -> int:
    """The estimated prompt size of `messages`, as `Conversation.messages` budgets it."""
    return sum(estimate_tokens(message.content) + MESSAGE_OVERHEAD_TOKENS for message in messages)


class Conversation:
    """The system prompt plus the turns so far. Append-only; `messages()` never changes it."""

    def __init__(self, system: str, turns: Iterable[Turn] = ()) -> None:
        self.system = system
        self._turns: list[Turn] = list(turns)

    @property
    def turns(self) -> tuple[Turn, ...]:
        return tuple(self._turns)

    def add(self, role: Role, content: str, kind: str, summary: str | None = None) -> Turn:
        """Append a turn and return it."""
        if role not in ("user", "assistant"):
            raise ValueError(f"a turn's role is 'user' or 'assistant', not {role!r}; the system prompt is fixed")
        if not kind:
            raise ValueError("a turn needs a kind")
        turn = Turn(role=role, content=content, kind=kind, summary=summary)
        self._turns.append(turn)
        return turn

    def protected(self) -> frozenset[int]:
        """Indices of the turns that are always sent whole (see the module docstring)."""
        keep: set[int] = set()
        first_user = next((i for i, turn in enumerate(self._turns) if turn.role == "user"), None)
        for index in (first_user, _last(self._turns, "code"), _last(self._turns, "failure")):
            if index is not None:
                keep.add(index)
        if self._turns:
            keep.add(len(self._turns) - 1)
        return frozenset(keep)

    def messages(self, budget_tokens: int | None = None) -> tuple[Message, ...]:
        """The messages to send, fitted to `budget_tokens` (None: everything whole)."""
        # Per turn: its text as sent, or None once dropped.
        texts: list[str | None] = [turn.content for turn in self._turns]

        def render() -> tuple[Message, ...]:
            return _render(self.system, self._turns, texts)

        if budget_tokens is None or count_tokens(render()) <= budget_tokens:
            return render()

        protected = self.protected()
        candidates = [i for i in range(len(self._turns)) if i not in protected]
        by_priority = [i for i in candidates if self._turns[i].kind in _SUMMARISE_FIRST] + [
            i for i in candidates if self._turns[i].kind not in _SUMMARISE_FIRST
        ]
        for index in by_priority:
            note = self._turns[index].note
            # A summary longer than its turn would only spend budget.
            if len(note) < len(self._turns[index].content):
                texts[index] = note
                if count_tokens(render()) <= budget_tokens:
                    return render()
        for group in _rounds(self._turns, candidates):
            for index in group:
                texts[index] = None
            if count_tokens(render()) <= budget_tokens:
                return render()
        return render()


def _last(turns: Sequence[Turn], kind: str) -> int | None:
    return next((i for i in range(len(turns) - 1, -1, -1) if turns[i].kind == kind), None)


def _rounds(turns: Sequence[Turn], candidates: Sequence[int]) -> list[tuple[int, ...]]:
    """The candidates in drop order, a turn paired with the next one when that one answers it.

    Dropping a draft's note together with the note on how it failed keeps the two from outliving each
    other, and keeps the roles alternating without joining anything.
    """
    groups: list[tuple[int, ...]] = []
    pending = list(candidates)
    while pending:
        index = pending.pop(0)
        if pending and pending[0] == index + 1 and turns[index + 1].role != turns[index].role:
            groups.append((index, pending.pop(0)))
        else:
            groups.append((index,))
    return groups


def _render(system: str, turns: Sequence[Turn], texts: Sequence[str | None]) -> tuple[Message, ...]:
    messages: list[Message] = [Message(role="system", content=system)]
    for turn, text in zip(turns, texts, strict=True):
        if text is None:
            continue
        previous = messages[-1]
        if previous.role == turn.role:
            messages[-1] = Message(role=turn.role, content=f"{previous.content}\n\n{text}")
        else:
            messages.append(Message(role=turn.role, content=text))
    return tuple(messages)
