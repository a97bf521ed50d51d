"""The model boundary: one request type, one reply type, one method.

Every backend (`openai`, `local`, `replay`) and every test model implements `ModelBackend`:
`complete(request, on_text=None) -> ModelReply`. The authoring loop sees nothing else, so a recorded
session replays through exactly the code path that produced it. `on_text` is for people watching
(the chat REPL): a backend that streams hands it each piece of the reply as it arrives, and one
that cannot hands it the whole text once; either way the pieces add up to `reply.text`, and the
reply is the same as without it.

A request is complete and self-describing: it carries the conversation (chat mode) or the rendered
prompt (completion mode), every sampling parameter (the temperature is never left to a server's
default), and the hash of each prompt template that produced it, so a replay mismatch can name the
template that changed. Its JSON form (`ModelRequest.normalised()`) is what transcripts record and
what replay compares.

Failures are split by who must act:
- `ModelUnreachable` (the environment): the server is down, refuses the key, or keeps failing
  after the retry budget. The CLI exits with code 3.
- An empty or truncated reply is the model's behaviour, not an exception: it comes back as a
  `ModelReply` (`text == ""`, or `finish_reason == "length"`) and the loop decides what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.errors import MetricsmithError
from agent.llm.secrets import clean_reply_text

__all__ = [
    "MAX_REPLY_CHARS",
    "ForwardingBackend",
    "Message",
    "ModelBackend",
    "ModelReply",
    "ModelRequest",
    "ModelUnreachable",
    "TextSink",
    "Usage",
    "estimate_tokens",
    "hand_over",
]

Mode = Literal["chat", "completion"]
# Receives the reply's text piece by piece while it is generated (see the module docstring).
TextSink = Callable[[str], None]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(_Frozen):
    role: Literal["system", "user", "assistant"]
    content: str


class ModelRequest(_Frozen):
    """What the loop asks of a model. Chat mode sends `messages`; completion mode sends `prompt`.

    In completion mode `messages` still holds the conversation the prompt was rendered from, and
    `reply_prefix` is the part of the prompt (the start of the code) that the completion continues:
    the reply text is `reply_prefix + completion`.
    """

    mode: Mode
    messages: tuple[Message, ...]
    prompt: str | None = None
    reply_prefix: str = ""
    temperature: float = Field(ge=0.0, le=2.0)
    max_tokens: int = Field(gt=0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # A llama.cpp GBNF grammar the completion must follow (completion mode only): it lets a small base
    # model write only valid code over the scaffold's names. None: unconstrained.
    grammar: str | None = None
    # Template name -> sha256 of its source, for every template that went into this request.
    templates: dict[str, str] = Field(default_factory=dict)

    def normalised(self) -> str:
        """Canonical JSON: sorted keys, no whitespace variation. Replay compares these strings."""
        # An unconstrained request has no "grammar" key, as recordings made before the field existed.
        data = self.model_dump(mode="json", exclude={"grammar"} if self.grammar is None else None)
        return json.dumps(data, sort_keys=True, ensure_ascii=False, indent=1)


class Usage(_Frozen):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    # True when the server sent no usage and the counts are `estimate_tokens` guesses.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# Far above any metric and its rationale (requests ask for a few thousand tokens at most).
MAX_REPLY_CHARS = 200_000


class ModelReply(_Frozen):
    """What came back. `text` is the whole reply (in completion mode, prefix included)."""

    text: str
    # "stop": the model finished; "length": cut at max_tokens; anything else as the server said it.
    finish_reason: str
    usage: Usage
    model: str
    latency_s: float = Field(ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _capped(cls, data: Any) -> Any:
        # A server that ignores max_tokens sent 50 MB, stored twice and shown whole by `review`: past the cap
        # the reply is cut, and marked as cut, as a reply that ran into max_tokens is.
        text = data.get("text") if isinstance(data, dict) else None
        if isinstance(text, str) and len(text) > MAX_REPLY_CHARS:
            return {**data, "text": text[:MAX_REPLY_CHARS], "finish_reason": "length"}
        return data

    @field_validator("text")
    @classmethod
    def _kept_clean(cls, text: str) -> str:
        # Scrubbed here, where every backend's reply passes, and not only when a transcript is written: the
        # code and rationale drawn from the text are written too, and a server may echo the key into it.
        return clean_reply_text(text)


@runtime_checkable
class ModelBackend(Protocol):
    """The one-method interface every backend implements."""

    @property
    def name(self) -> str:
        """ "openai", "local", "replay", or a test model's name."""
        ...

    @property
    def model(self) -> str:
        """The model identifier as the backend knows it (recorded in transcripts)."""
        ...

    @property
    def mode(self) -> Mode:
        """The mode the loop should build requests in: "chat", or "completion" for base models."""
        ...

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """Send one request. Raises ModelUnreachable when the model cannot be reached."""
        ...


class ForwardingBackend:
    """Wraps another backend (to record, count or replay its exchanges); name, model and mode are the inner one's."""

    def __init__(self, inner: ModelBackend) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def mode(self) -> Mode:
        return self.inner.mode

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        return self.inner.complete(request, on_text)


class ModelUnreachable(MetricsmithError):
    """The model server failed or could not be reached after retries. Exit code 3."""


def hand_over(reply: ModelReply, on_text: TextSink | None) -> ModelReply:
    """For backends that cannot stream: the whole text to the sink, once, then the reply."""
    if on_text is not None and reply.text:
        on_text(reply.text)
    return reply


def estimate_tokens(text: str) -> int:
    """A rough token count for servers that report no usage: about 4 characters per token."""
    return max(1, (len(text) + 3) // 4) if text else 0
