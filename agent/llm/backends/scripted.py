"""A model that answers from a script: for tests, fixtures and demos, behind the same one-method boundary.

`ScriptedModel(["reply 1", "reply 2", ...])` returns its replies in order and keeps every request
it was sent in `history`, so a test can assert the whole conversation the loop produced. Running
out of replies raises: a loop that asks more often than the script expects is a failure to see.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.llm.model import Mode, ModelReply, ModelRequest, TextSink, Usage, estimate_tokens, hand_over

__all__ = ["ScriptExhausted", "ScriptedModel"]


class ScriptExhausted(AssertionError):
    """The loop sent more requests than the script holds replies."""


class ScriptedModel:
    def __init__(self, replies: Iterable[str], *, name: str = "scripted", model: str = "script", mode: Mode = "chat"):
        self._replies = list(replies)
        self._name, self._model, self._mode = name, model, mode
        self.history: list[ModelRequest] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def remaining(self) -> int:
        return len(self._replies) - len(self.history)

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        if self.remaining <= 0:
            raise ScriptExhausted(f"the script has {len(self._replies)} replies; request {len(self.history) + 1} came")
        text = self._replies[len(self.history)]
        self.history.append(request)
        prompt = request.prompt if request.prompt is not None else "".join(m.content for m in request.messages)
        reply = ModelReply(
            text=text,
            finish_reason="stop",
            # Deterministic counts, so a recorded fixture replays to the same token totals.
            usage=Usage(prompt_tokens=estimate_tokens(prompt), completion_tokens=estimate_tokens(text), estimated=True),
            model=self._model,
            latency_s=0.0,
        )
        return hand_over(reply, on_text)
