"""The `openai` backend: OpenAI itself, or any OpenAI-compatible server (Ollama, vLLM, llama.cpp).

Design:
- One SDK client per backend, with the SDK's own retries OFF (`max_retries=0`). Retrying happens
  here, with tenacity, so that one policy decides, the attempt count is exact, and a total time
  budget bounds the whole call (each attempt's timeout is also cut to what is left of it).
- Only transient failures are retried: 429 (waiting at least what `retry-after` asks, capped), 5xx,
  408, timeouts, connection errors and an unreadable response body. Everything else (401/403 key,
  404 model, 400 request) is a fact that retrying will not change, so it fails at once.
- Every failure leaves as `ModelUnreachable` with one line: what failed, where (the base URL), what
  to do. The API key never appears in it: auth errors don't quote the server, and any server text
  that is quoted has the key scrubbed out (a proxy may echo headers back).
- Chat mode calls `/chat/completions`; completion mode (base models) calls `/completions` with the
  rendered prompt, and the reply is `reply_prefix + completion`, as `ModelRequest` defines. A
  request's grammar goes as llama.cpp's `grammar` field (the user asks for it with `--grammar`).
- OpenAI's reasoning models (o1, o3, o4-mini, gpt-5 ...) are sent only what they accept: no
  temperature or stop, and `max_completion_tokens` with headroom for their hidden reasoning.
- An empty reply or a truncated one is the model's behaviour, not an error: it is returned as it
  came (`text == ""`, `finish_reason == "length"`) for the loop to judge.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import openai
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_before_delay

from agent.errors import UserError
from agent.llm.backends import server_url_problem
from agent.llm.model import Mode, ModelReply, ModelRequest, ModelUnreachable, TextSink, Usage, estimate_tokens

__all__ = ["DEFAULT_BASE_URL", "OpenAIBackend"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers ignore the key, but the SDK refuses to build a client without one.
_PLACEHOLDER_KEY = "no-key-needed"
# Server text quoted in an error line is cut to this many characters.
_QUOTE_CHARS = 200

T = TypeVar("T")


class _UnreadableReply(Exception):
    """The server answered 2xx with a body that is not a completion (bad JSON, HTML, no choices)."""


class _TotalTimeout(Exception):
    """The reply did not arrive whole within the request's timeout, though bytes kept coming (`_within`)."""


class _BrokenStream(Exception):
    """A streamed reply failed after some of it was shown: not retried (see `complete`)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


# What an unreadable body raises, on its way through the SDK or through _first_choice.
_UNREADABLE = (_UnreadableReply, json.JSONDecodeError, UnicodeDecodeError, openai.APIResponseValidationError)
_TIMEOUTS = (openai.APITimeoutError, _TotalTimeout)


def _check_url(url: str, given_as: str) -> None:
    problem = server_url_problem(url)
    if problem is not None:
        raise UserError(f"{given_as} {url!r} is not a server URL: {problem}")


class OpenAIBackend:
    """A model behind the OpenAI HTTP API. See the module docstring for the retry policy."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        mode: Mode = "chat",
        timeout_s: float | None = None,
        max_attempts: int = 5,
        budget_s: float | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 20.0,
        max_retry_after_s: float = 60.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        resolved_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if resolved_url is not None:
            _check_url(resolved_url, "--base-url" if base_url else "OPENAI_BASE_URL")
        api_key = os.environ.get("OPENAI_API_KEY") or None
        if api_key is None:
            if resolved_url is None:
                raise UserError(
                    "no OpenAI API key: set OPENAI_API_KEY, or pass --base-url for a local OpenAI-compatible server"
                )
            api_key = _PLACEHOLDER_KEY
        if timeout_s is None:
            timeout_s = OPENAI_TIMEOUT_S if _is_openai(resolved_url) else LOCAL_SERVER_TIMEOUT_S
        if budget_s is None:  # room for a retry after one whole timeout
            budget_s = max(DEFAULT_BUDGET_S, 2 * timeout_s)
        self._model = model
        self._mode: Mode = mode
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._budget_s = budget_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_retry_after_s = max_retry_after_s
        self._client = openai.OpenAI(
            base_url=resolved_url or DEFAULT_BASE_URL, api_key=api_key, max_retries=0, timeout=timeout_s
        )
        self.base_url = str(self._client.base_url).rstrip("/")

    @property
    def name(self) -> str:
        return "openai"

    @property
    def model(self) -> str:
        return self._model

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def request_timeout_s(self) -> float:
        """Seconds one attempt waits for its reply."""
        return self._timeout_s

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """Send one request, retrying transient failures. Raises ModelUnreachable.

        With `on_text` the reply is streamed. A failure before the first piece is retried as usual;
        after it, the text already shown cannot be taken back, so the failure ends the call.
        """
        if request.mode == "completion" and request.prompt is None:
            raise ValueError("a completion-mode request needs a prompt")
        if on_text is not None:
            return self._with_retries(lambda timeout: self._send_streamed(request, timeout, on_text))
        send = self._send_completion if request.mode == "completion" else self._send_chat
        return self._with_retries(lambda timeout: send(request, timeout))

    # -- retrying -------------------------------------------------------------------------------

    def _with_retries(self, attempt: Callable[[float], T]) -> T:
        start = time.monotonic()
        attempts = 0

        def one_attempt() -> T:
            nonlocal attempts
            attempts += 1
            # The budget bounds the whole call, so no single attempt may outlive it.
            remaining = self._budget_s - (time.monotonic() - start)
            return attempt(max(0.01, min(self._timeout_s, remaining)))

        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts) | stop_before_delay(self._budget_s),
            wait=self._wait,
            retry=retry_if_exception(self._worth_retrying),
            reraise=True,
        )
        try:
            return retrying(one_attempt)
        except _BrokenStream as broken:
            explained = self._explain(broken.cause, attempts, time.monotonic() - start)
            raise ModelUnreachable(f"{explained} (the reply broke off while streaming)") from broken.cause
        except (openai.OpenAIError, _TotalTimeout, *_UNREADABLE) as exc:  # a bug of ours stays a traceback
            raise ModelUnreachable(self._explain(exc, attempts, time.monotonic() - start)) from exc

    def _worth_retrying(self, exc: BaseException) -> bool:
        """Transient, and not a server asking to wait longer than we would: that one failed minutes later anyway."""
        return _is_transient(exc) and self._too_long_a_wait(exc) is None

    def _too_long_a_wait(self, exc: BaseException) -> float | None:
        """The wait the server asked for (Retry-After), when it is longer than we wait; else None."""
        asked = _retry_after_s(exc) if isinstance(exc, openai.APIStatusError) else None
        return asked if asked is not None and asked > self._max_retry_after_s else None

    def _wait(self, state: RetryCallState) -> float:
        # Full-jitter exponential backoff, but never shorter than what the server asked for.
        ceiling = min(self._max_backoff_s, self._backoff_s * 2 ** (state.attempt_number - 1))
        backoff = random.uniform(0, ceiling)
        exc = state.outcome.exception() if state.outcome else None
        asked = _retry_after_s(exc) if isinstance(exc, openai.APIStatusError) else None
        if asked is None:
            return backoff
        return max(min(asked, self._max_retry_after_s), backoff)

    # -- the two endpoints ----------------------------------------------------------------------

    def _create(self, request: ModelRequest, timeout: float, **extra: Any) -> Any:
        """Call the mode's endpoint with the request's sampling parameters (and `extra` ones)."""
        params = _sampling(request, self._model) | extra
        if request.mode == "completion":
            assert request.prompt is not None  # checked in complete()
            return self._client.completions.create(model=self._model, prompt=request.prompt, timeout=timeout, **params)
        messages: Any = [{"role": m.role, "content": m.content} for m in request.messages]
        return self._client.chat.completions.create(model=self._model, messages=messages, timeout=timeout, **params)

    def _within(self, timeout: float, call: Callable[[], T]) -> T:
        """`call()`, or a timeout once `timeout` seconds have passed in all.

        The HTTP client's timeout is per read: a server that sends a byte every second never trips it, and
        the request went on for as long as the server liked. The call runs on a daemon thread, left behind
        when the time is up (it ends when the server closes the connection, or with the process).
        """
        done = threading.Event()
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as error:  # handed to the waiting thread as it is
                outcome.append((False, error))
            finally:
                done.set()

        threading.Thread(target=run, name="model-request", daemon=True).start()
        if not done.wait(timeout):
            raise _TotalTimeout(f"no whole reply in {timeout:g} s")
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return cast(T, value)

    def _send_chat(self, request: ModelRequest, timeout: float) -> ModelReply:
        started = time.perf_counter()
        response = self._within(timeout, lambda: self._create(request, timeout))
        latency = time.perf_counter() - started
        choice = _first_choice(response)
        message = getattr(choice, "message", None)
        # A refusal comes without content, in a field of its own: kept as the reply, it is recorded and shown
        # as the model's words, not mistaken for an empty reply (which points at a base model).
        text = getattr(message, "content", None) or getattr(message, "refusal", None) or ""
        return self._reply(response, choice, text, text, _prompt_text(request), latency)

    def _send_completion(self, request: ModelRequest, timeout: float) -> ModelReply:
        started = time.perf_counter()
        response = self._within(timeout, lambda: self._create(request, timeout))
        latency = time.perf_counter() - started
        choice = _first_choice(response)
        completion = getattr(choice, "text", None) or ""
        text = request.reply_prefix + completion
        return self._reply(response, choice, text, completion, _prompt_text(request), latency)

    def _send_streamed(self, request: ModelRequest, timeout: float, on_text: TextSink) -> ModelReply:
        started = time.perf_counter()
        extra: dict[str, Any] = {"stream": True}
        if self.base_url == DEFAULT_BASE_URL.rstrip("/"):
            # OpenAI sends a stream's usage only when asked; some compatible servers reject the option.
            extra["stream_options"] = {"include_usage": True}
        stream = self._within(timeout, lambda: self._create(request, timeout, **extra))
        parts: list[str] = []
        finish: str | None = None
        last: Any = None
        try:
            for chunk in _until(stream, started + timeout):
                last = chunk if getattr(chunk, "usage", None) is not None or last is None else last
                for choice in getattr(chunk, "choices", None) or ():
                    delta = getattr(choice, "delta", None)
                    piece = getattr(delta, "content", None) if delta is not None else getattr(choice, "text", None)
                    if piece:
                        if not parts and request.mode == "completion":
                            on_text(request.reply_prefix)
                        parts.append(piece)
                        on_text(piece)
                    finish = getattr(choice, "finish_reason", None) or finish
        except (openai.OpenAIError, _TotalTimeout, *_UNREADABLE) as exc:
            if parts:
                raise _BrokenStream(exc) from exc
            raise
        if not parts and request.mode == "completion" and request.reply_prefix:
            on_text(request.reply_prefix)  # nothing was generated: the reply is the prefix alone
        generated = "".join(parts)
        text = request.reply_prefix + generated if request.mode == "completion" else generated
        finished = SimpleNamespace(finish_reason=finish)
        return self._reply(last, finished, text, generated, _prompt_text(request), time.perf_counter() - started)

    def _reply(
        self, response: Any, choice: Any, text: str, generated: str, prompt_text: str, latency: float
    ) -> ModelReply:
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if (
            isinstance(prompt_tokens, int)
            and isinstance(completion_tokens, int)
            and min(prompt_tokens, completion_tokens) >= 0
        ):
            counted = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        else:
            # Some compatible servers send no usage (or half of it); a guess beats a crash.
            counted = Usage(
                prompt_tokens=estimate_tokens(prompt_text), completion_tokens=estimate_tokens(generated), estimated=True
            )
        return ModelReply(
            text=text,
            finish_reason=getattr(choice, "finish_reason", None) or "unknown",
            usage=counted,
            model=getattr(response, "model", None) or self._model,
            latency_s=latency,
        )

    # -- error lines ----------------------------------------------------------------------------

    def _explain(self, exc: BaseException, attempts: int, elapsed: float) -> str:
        where = f"the model server at {self.base_url}"
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''} in {elapsed:.1f} s"
        if isinstance(exc, _TIMEOUTS):
            return (
                f"{where} did not answer in time ({tries}, {self._timeout_s:g} s each); is it overloaded? "
                "raise --request-timeout (request_timeout in a batch config's [model]) or try again"
            )
        if isinstance(exc, openai.APIConnectionError):
            # The HTTP client's own error says which: it never connected, or the connection broke off mid-reply.
            cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else ""
            if cause in ("RemoteProtocolError", "ReadError"):
                return f"{where} closed the connection in the middle of its reply ({tries}); is it crashing?"
            return f"cannot connect to {where} ({tries}); is the server running and the URL right?"
        if isinstance(exc, _UNREADABLE):
            return f"{where} kept sending unreadable replies ({tries}); is it really an OpenAI-compatible API?"
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status in (401, 403):
                return f"{where} refused the API key (HTTP {status}); check OPENAI_API_KEY"
            if status == 404:
                return (
                    f"{where} has no model {self._model!r} (HTTP 404: {self._quote(exc)}); "
                    "check the model name, or load the model on the server"
                )
            if status == 429:
                asked = self._too_long_a_wait(exc)
                if asked is not None:
                    return f"{where} asks to wait {_duration(asked)} before the next request (HTTP 429); try again then"
                return f"{where} kept rate-limiting the requests (HTTP 429, {tries}); wait and try again"
            if status >= 500 or status == 408:
                return (
                    f"{where} kept failing (HTTP {status}: {self._quote(exc)}, {tries}); "
                    "check the server's logs or try again later"
                )
            quoted = self._quote(exc)
            if _CONTEXT_TOO_SMALL.search(quoted):
                larger = _larger_context(quoted)
                return (
                    f"{where} has too small a context for this prompt and its reply (HTTP {status}: "
                    f"{quoted}); start the server with a larger one, e.g. {larger} tokens "
                    f"(llama_cpp.server --n_ctx {larger}, llama-server -c {larger}, Ollama's num_ctx)"
                )
            return f"{where} rejected the request (HTTP {status}: {quoted}); check the model name and options"
        return f"the request to {where} failed ({type(exc).__name__}: {self._quote(exc)})"

    def _quote(self, exc: BaseException) -> str:
        """The server's own words, on one line, short, with the API key scrubbed out."""
        message = getattr(exc, "message", None) or str(exc)
        if len(self._api_key) >= 8:  # a short key would garble the text and is not worth hiding
            message = message.replace(self._api_key, "***")
        message = re.sub(r"^Error code: \d+ - ", "", " ".join(message.split()))  # we already say the status
        message = re.sub(r"\bsk-[A-Za-z0-9_\-*]{6,}", "sk-***", message)
        return message[:_QUOTE_CHARS] + ("…" if len(message) > _QUOTE_CHARS else "")


# Seconds per request. OpenAI answers within a minute or is in trouble; a model served on the user's own
# CPU may take minutes over a 2,000-token prompt (llama_cpp.server on one loaded core: 113 s), and
# giving up on it early wastes the work it has done.
OPENAI_TIMEOUT_S = 60.0
LOCAL_SERVER_TIMEOUT_S = 300.0
DEFAULT_BUDGET_S = 120.0


def _is_openai(base_url: str | None) -> bool:
    return base_url is None or "api.openai.com" in base_url


# How llama.cpp's servers, vLLM and OpenAI word a prompt that does not fit the model's context. A completion
# prompt with its scaffold and examples runs to about 2,100 tokens of Gemma's, and llama_cpp.server's
# default context is 2,048, so a user starting it as its docs do meets this first.
_CONTEXT_TOO_SMALL = re.compile(
    r"maximum context length|context window|context size|exceeds? the (?:available )?context", re.IGNORECASE
)


# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5 and later) take `max_completion_tokens`, which also
# pays for their hidden reasoning, and refuse `temperature` and `stop`.
_REASONING_MODEL = re.compile(r"^(?:openai/)?(?:o[1-9]|gpt-(?:[5-9]|\d{2,}))", re.IGNORECASE)
# Room for the hidden reasoning on top of the reply's own budget; without it the reply comes back empty.
REASONING_HEADROOM_TOKENS = 8192


def is_reasoning_model(model: str) -> bool:
    return _REASONING_MODEL.match(model) is not None


def _sampling(request: ModelRequest, model: str) -> dict[str, Any]:
    """The sampling parameters: temperature always explicit, stop and seed only when set.

    A reasoning model gets what it accepts instead: no temperature or stop (the request still records
    them, as asked), and `max_completion_tokens` with headroom for its reasoning.
    """
    params: dict[str, Any] = {"temperature": request.temperature, "max_tokens": request.max_tokens}
    if request.stop:
        params["stop"] = list(request.stop)
    if is_reasoning_model(model):
        params = {"max_completion_tokens": request.max_tokens + REASONING_HEADROOM_TOKENS}
    if request.seed is not None:
        params["seed"] = request.seed
    if request.grammar is not None:
        # llama.cpp's server field; asked for only with --grammar, since OpenAI itself rejects it.
        params["extra_body"] = {"grammar": request.grammar}
    return params


def _prompt_text(request: ModelRequest) -> str:
    """What the model was shown, for estimating its size when a server reports no usage."""
    if request.mode == "completion" and request.prompt is not None:
        return request.prompt
    return "\n".join(m.content for m in request.messages)


def _first_choice(response: Any) -> Any:
    # The SDK returns the body as a str when the content type is not JSON (an HTML error page from
    # a proxy, say), and builds models without validation, so a wrong body shows up only here.
    choices = getattr(response, "choices", None)
    if isinstance(response, str) or not choices:
        raise _UnreadableReply(f"no choices in the reply: {str(response)[:100]!r}")
    return choices[0]


def _until(stream: Any, deadline: float) -> Iterator[Any]:
    """The stream's chunks, or `_TotalTimeout` once `deadline` (time.perf_counter()) has passed.

    The HTTP client's timeout is per read, and a server that sends keep-alive comments, or a word a second,
    never trips it: a chat waited on one for ever. The chunks are read on a daemon thread and handed over
    here, so this thread (the one that shows them, and that Ctrl-C reaches) never blocks past the deadline;
    when it stops early, the stream is closed, which ends the reading thread too.
    """
    handed: queue.Queue[tuple[str, Any]] = queue.Queue()

    def read() -> None:
        try:
            for chunk in stream:
                handed.put(("chunk", chunk))
            handed.put(("end", None))
        except BaseException as error:  # handed to the waiting thread as it is
            handed.put(("error", error))

    threading.Thread(target=read, name="model-stream", daemon=True).start()
    ended = False
    try:
        while True:
            try:
                kind, value = handed.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                raise _TotalTimeout("no whole reply in time") from None
            if kind == "end":
                ended = True
                return
            if kind == "error":
                raise value
            yield value
    finally:
        if not ended:
            with contextlib.suppress(Exception):
                stream.close()


def _larger_context(said: str) -> int:
    """A context size to suggest: twice the one the server names (it said 4096 and was told "e.g. 4096"), at
    least 4096, a power of two."""
    named = re.search(r"(?i)(?:context(?: length| size| window)?|n_ctx)\D{0,12}?(\d{3,7})\b", said)
    wanted = max(4096, 2 * int(named.group(1)) if named else 0)
    return 1 << (wanted - 1).bit_length()


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIConnectionError | _TotalTimeout):  # timeouts included
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return isinstance(exc, _UNREADABLE)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _retry_after_s(exc: openai.APIStatusError) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, or `retry-after` in seconds or as an HTTP date."""
    headers = exc.response.headers
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
