"""The conversation manager: what is sent whole, what is summarised, what is dropped, for a given budget."""

from __future__ import annotations

import pytest

from agent.llm.conversation import Conversation, Turn, count_tokens
from agent.llm.model import Message

SYSTEM = "You write data-quality metrics for COCO datasets. Return one Python file."
IDEA = "Score each box by how far its aspect ratio is from the median of its category."
NOTE = "Also skip crowd boxes, they have no meaningful aspect ratio. " * 8


def code(n: int) -> str:
    return f"# draft {n}\ndef score(image, obj, scene):\n" + f"    value_{n} = obj['bbox'][2] / obj['bbox'][3]\n" * 10


def failure(n: int) -> str:
    frames = "".join(f'  File "metric.py", line {line}, in score\n' for line in range(12))
    return f"Draft {n} failed on 40 of 120 boxes:\nTraceback (most recent call last):\n{frames}ZeroDivisionError\n"


def code_note(n: int) -> str:
    return f"[earlier draft {n} (sha {n}{n}{n}abc) failed: ZeroDivisionError in score line 12]"


def failure_note(n: int) -> str:
    return f"[draft {n} failure: ZeroDivisionError on 40 of 120 boxes]"


def session(drafts: int = 3) -> Conversation:
    """The conversation of a repair loop after `drafts` drafts that all failed."""
    conversation = Conversation(SYSTEM)
    conversation.add("user", IDEA, "idea")
    for n in range(1, drafts + 1):
        conversation.add("assistant", code(n), "code", code_note(n))
        conversation.add("user", failure(n), "failure", failure_note(n))
    return conversation


def system() -> Message:
    return Message(role="system", content=SYSTEM)


def user(content: str) -> Message:
    return Message(role="user", content=content)


def assistant(content: str) -> Message:
    return Message(role="assistant", content=content)


WHOLE = (
    system(),
    user(IDEA),
    assistant(code(1)),
    user(failure(1)),
    assistant(code(2)),
    user(failure(2)),
    assistant(code(3)),
    user(failure(3)),
)


def test_without_a_budget_or_within_it_everything_is_whole() -> None:
    conversation = session()
    assert conversation.messages() == WHOLE
    assert conversation.messages(count_tokens(WHOLE)) == WHOLE


def test_over_budget_the_oldest_draft_is_summarised_first() -> None:
    budget = count_tokens(WHOLE) - 1
    assert session().messages(budget) == (
        system(),
        user(IDEA),
        assistant(code_note(1)),
        user(failure(1)),
        assistant(code(2)),
        user(failure(2)),
        assistant(code(3)),
        user(failure(3)),
    )


def test_all_old_drafts_and_failures_summarised_latest_kept_whole() -> None:
    expected = (
        system(),
        user(IDEA),
        assistant(code_note(1)),
        user(failure_note(1)),
        assistant(code_note(2)),
        user(failure_note(2)),
        assistant(code(3)),
        user(failure(3)),
    )
    messages = session().messages(count_tokens(expected))
    assert messages == expected


def test_then_the_oldest_notes_are_dropped_a_round_at_a_time() -> None:
    expected = (
        system(),
        user(IDEA),
        assistant(code_note(2)),
        user(failure_note(2)),
        assistant(code(3)),
        user(failure(3)),
    )
    assert session().messages(count_tokens(expected)) == expected


def test_the_protected_turns_survive_any_budget() -> None:
    conversation = session()
    protected = (system(), user(IDEA), assistant(code(3)), user(failure(3)))
    assert conversation.messages(1) == protected
    assert count_tokens(protected) > 1  # over budget, and the caller can see it


def test_latest_failure_and_last_turn_are_kept_even_when_code_came_after() -> None:
    # Draft 2 has not run yet and the user adds a note: draft 2, failure 1 and the note all stay whole.
    conversation = session(drafts=1)
    conversation.add("assistant", code(2), "code", code_note(2))
    conversation.add("user", NOTE, "note", "[user note: skip crowd boxes]")
    assert conversation.protected() == frozenset({0, 2, 3, 4})
    # Draft 1 is the only thing left to cut; once it is gone the idea and failure 1 are neighbours, joined.
    assert conversation.messages(1) == (
        system(),
        user(f"{IDEA}\n\n{failure(1)}"),
        assistant(code(2)),
        user(NOTE),
    )


def test_bulky_kinds_are_summarised_before_older_notes() -> None:
    conversation = Conversation(SYSTEM)
    conversation.add("user", IDEA, "idea")
    conversation.add("assistant", "Understood. " * 40, "note", "[assistant acknowledged]")
    conversation.add("user", NOTE, "note", "[user note: skip crowd boxes]")
    conversation.add("assistant", code(1), "code", code_note(1))
    conversation.add("user", failure(1), "failure", failure_note(1))
    conversation.add("assistant", code(2), "code", code_note(2))
    conversation.add("user", failure(2), "failure", failure_note(2))
    conversation.add("user", "Explain the bug in 2-3 sentences, then write the whole file.", "repair_request")
    expected = (
        system(),
        user(IDEA),
        assistant("Understood. " * 40),
        user(NOTE),
        assistant(code_note(1)),
        user(failure_note(1)),
        assistant(code(2)),
        # Consecutive user turns (failure, then the repair request) are one message.
        user(f"{failure(2)}\n\nExplain the bug in 2-3 sentences, then write the whole file."),
    )
    assert conversation.messages(count_tokens(expected)) == expected


def test_a_turn_without_a_summary_gets_a_generic_note() -> None:
    conversation = Conversation(SYSTEM)
    conversation.add("user", IDEA, "idea")
    conversation.add("assistant", "no code here, sorry " * 20, "format_error")
    conversation.add("user", "Your reply had no code block. Reply with one ```python block.", "repair_request")
    conversation.add("assistant", code(1), "code", code_note(1))
    assert conversation.turns[1] == Turn("assistant", "no code here, sorry " * 20, "format_error")
    assert conversation.messages(count_tokens(conversation.messages()) - 1)[2] == assistant(
        "[earlier format_error omitted]"
    )


def test_messages_is_deterministic_and_leaves_the_turns_alone() -> None:
    conversation = session()
    turns = conversation.turns
    first = conversation.messages(200)
    assert conversation.messages(200) == first
    assert conversation.turns == turns
    assert conversation.messages() == WHOLE


def test_add_rejects_a_system_turn_and_an_empty_kind() -> None:
    conversation = Conversation(SYSTEM)
    with pytest.raises(ValueError, match="the system prompt is fixed"):
        conversation.add("system", "new rules", "note")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a kind"):
        conversation.add("user", IDEA, "")
    assert conversation.messages() == (system(),)
