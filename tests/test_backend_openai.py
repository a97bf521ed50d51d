"""OpenAIBackend against a real HTTP server on loopback that speaks the OpenAI JSON and misbehaves on cue.

Each test scripts the server's answers in order (the last one repeats), then checks what the
backend returned or raised and what the server saw: how many requests, and their bodies.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.data.demo import generate_demo_dataset
from agent.errors import UserError
from agent.llm.backends.openai import REASONING_HEADROOM_TOKENS, OpenAIBackend
from agent.llm.model import Message, ModelBackend, ModelRequest, ModelUnreachable

API_KEY = "sk-test-SECRET-0123456789abcdef"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = None  # a dict is sent as JSON; a str as it is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str = "application/json"
    # Close the connection after this many bytes of the body (a server dying mid-reply).
    cut_after: int | None = None
    # Send the body a byte at a time, this long apart (a server that never trips a per-read timeout).
    drip_s: float | None = None


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class FakeOpenAI:
    """A scripted OpenAI-compatible server: answers in order, the last answer repeating."""

    def __init__(self) -> None:
        self.answers: list[Answer] = [Answer(body=chat_body("ok"))]
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def script(self, *answers: Answer) -> None:
        self.answers = list(answers)

    def _next(self, received: Received) -> Answer:
        with self._lock:
            self.received.append(received)
            index = min(len(self.received), len(self.answers)) - 1
            return self.answers[index]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                received = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw), time.monotonic()
                )
                answer = fake._next(received)
                time.sleep(answer.delay_s)
                payload = answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
                data = payload.encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("content-type", answer.content_type)
                    self.send_header("content-length", str(len(data)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if answer.drip_s is not None:
                        for at in range(len(data)):
                            self.wfile.write(data[at : at + 1])
                            self.wfile.flush()
                            time.sleep(answer.drip_s)
                    elif answer.cut_after is None:
                        self.wfile.write(data)
                    else:
                        self.wfile.write(data[: answer.cut_after])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the stall test): that is the point

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def backend(server: FakeOpenAI, **options: Any) -> OpenAIBackend:
    settings: dict[str, Any] = {"max_attempts": 3, "budget_s": 10.0, "backoff_s": 0.01, "timeout_s": 5.0}
    return OpenAIBackend("test-model", base_url=server.url, **(settings | options))


def chat_body(content: str | None, finish_reason: str = "stop", usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    return body


def completion_body(text: str, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }


def sse(*events: dict[str, Any]) -> str:
    """A server-sent event stream, as OpenAI sends a streamed reply."""
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"


def chat_chunk(content: str | None, finish_reason: str | None = None, usage: bool = False) -> dict[str, Any]:
    choices = [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}]
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "test-model", "choices": choices,
    }  # fmt: skip
    if usage:
        chunk["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    return chunk


def chat_request(**overrides: Any) -> ModelRequest:
    fields: dict[str, Any] = {
        "mode": "chat",
        "messages": (Message(role="system", content="You write metrics."), Message(role="user", content="Box area.")),
        "temperature": 0.2,
        "max_tokens": 64,
    }
    return ModelRequest(**(fields | overrides))


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "error", "code": None, "param": None}}


def test_a_plain_chat_reply_comes_back_with_usage_and_latency(server: FakeOpenAI) -> None:
    server.script(Answer(body=chat_body("def score(image, scene):\n    return 1.0\n")))
    chat = backend(server)
    reply = chat.complete(chat_request())
    assert isinstance(chat, ModelBackend)
    assert (chat.name, chat.model, chat.mode) == ("openai", "test-model", "chat")
    assert reply.text == "def score(image, scene):\n    return 1.0\n"
    assert reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.estimated) == (11, 7, False)
    assert reply.model == "test-model"
    assert 0 < reply.latency_s < 5
    [seen] = server.received
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"


def test_every_sampling_parameter_is_sent(server: FakeOpenAI) -> None:
    backend(server).complete(chat_request(temperature=0.0, max_tokens=99, stop=("\n\n\n", "```"), seed=7))
    body = server.received[0].body
    assert body["model"] == "test-model"
    assert body["messages"] == [
        {"role": "system", "content": "You write metrics."},
        {"role": "user", "content": "Box area."},
    ]
    assert (body["temperature"], body["max_tokens"], body["stop"], body["seed"]) == (0.0, 99, ["\n\n\n", "```"], 7)


def test_stop_and_seed_are_left_out_when_unset(server: FakeOpenAI) -> None:
    backend(server).complete(chat_request())
    body = server.received[0].body
    assert body["temperature"] == 0.2 and "stop" not in body and "seed" not in body


def test_completion_mode_uses_the_completions_endpoint_and_prepends_the_prefix(server: FakeOpenAI) -> None:
    server.script(Answer(body=completion_body("    return 0.5\n")))
    prefix = "def score(image, scene):\n"
    request = chat_request(mode="completion", prompt='"""Brightness."""\n' + prefix, reply_prefix=prefix, seed=1)
    reply = backend(server, mode="completion").complete(request)
    assert reply.text == "def score(image, scene):\n    return 0.5\n"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (20, 5)
    [seen] = server.received
    assert seen.path == "/v1/completions"
    assert seen.body["prompt"] == '"""Brightness."""\n' + prefix
    assert (seen.body["temperature"], seen.body["max_tokens"], seen.body["seed"]) == (0.2, 64, 1)


def test_a_truncated_reply_says_length(server: FakeOpenAI) -> None:
    server.script(Answer(body=chat_body("def score(image, sc", finish_reason="length")))
    reply = backend(server).complete(chat_request())
    assert (reply.text, reply.finish_reason) == ("def score(image, sc", "length")


@pytest.mark.parametrize("content", ["", None])
def test_an_empty_chat_reply_is_returned_not_raised(server: FakeOpenAI, content: str | None) -> None:
    server.script(Answer(body=chat_body(content)))
    reply = backend(server).complete(chat_request())
    assert (reply.text, reply.finish_reason) == ("", "stop")
    assert len(server.received) == 1


def test_missing_usage_is_estimated(server: FakeOpenAI) -> None:
    server.script(Answer(body=chat_body("x = 1" * 10, usage=False)))
    reply = backend(server).complete(chat_request())
    assert reply.usage.estimated
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_429_waits_as_long_as_retry_after_asks_then_retries(server: FakeOpenAI) -> None:
    server.script(Answer(429, error_body("slow down"), {"retry-after": "1"}), Answer(body=chat_body("ok")))
    reply = backend(server).complete(chat_request())
    assert reply.text == "ok"
    first, second = server.received
    assert second.at - first.at >= 1.0


def test_a_500_then_success_is_retried(server: FakeOpenAI) -> None:
    server.script(Answer(500, error_body("boom")), Answer(body=chat_body("ok")))
    assert backend(server).complete(chat_request()).text == "ok"
    assert len(server.received) == 2


def test_a_stall_past_the_timeout_is_retried(server: FakeOpenAI) -> None:
    server.script(Answer(body=chat_body("late"), delay_s=1.5), Answer(body=chat_body("ok")))
    started = time.monotonic()
    reply = backend(server, timeout_s=0.4).complete(chat_request())
    assert reply.text == "ok"
    assert len(server.received) == 2
    assert time.monotonic() - started < 1.4  # it gave up on the stall instead of waiting it out
    assert reply.latency_s < 0.4  # latency is the successful attempt's, not the whole call's


def test_a_server_too_slow_on_every_attempt_names_the_option_that_waits_longer(server: FakeOpenAI) -> None:
    server.script(*(Answer(body=chat_body("late"), delay_s=1.0) for _ in range(2)))
    with pytest.raises(ModelUnreachable) as caught:
        backend(server, timeout_s=0.3, max_attempts=2).complete(chat_request())
    message = str(caught.value)
    assert "did not answer in time" in message and "0.3 s each" in message and "--request-timeout" in message


def test_a_reply_that_drips_in_past_the_timeout_is_a_timeout(server: FakeOpenAI) -> None:
    # Each byte came within the HTTP client's per-read timeout, so the request went on for as long as the server liked.
    server.script(Answer(body=chat_body("slow"), drip_s=0.01), Answer(body=chat_body("ok")))
    started = time.monotonic()
    reply = backend(server, timeout_s=0.5).complete(chat_request())
    assert reply.text == "ok" and len(server.received) == 2
    assert time.monotonic() - started < 1.5, "it waited for the dripping reply"


def test_a_local_server_is_given_longer_than_openai_to_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    # A model on the user's own CPU may take minutes over a long prompt; OpenAI is in trouble by then.
    local = OpenAIBackend("gemma", base_url="http://127.0.0.1:9/v1")
    hosted = OpenAIBackend("gpt-4o-mini")
    assert local.request_timeout_s > hosted.request_timeout_s >= 30
    assert OpenAIBackend("gemma", base_url="http://127.0.0.1:9/v1", timeout_s=900).request_timeout_s == 900


@pytest.mark.parametrize("garbage", ['{"choices": [', "<html>Bad gateway</html>", '{"object": "error"}'])
def test_an_unreadable_body_is_retried(server: FakeOpenAI, garbage: str) -> None:
    server.script(Answer(body=garbage), Answer(body=chat_body("ok")))
    assert backend(server).complete(chat_request()).text == "ok"
    assert len(server.received) == 2


def test_persistent_500_gives_up_after_exactly_max_attempts(server: FakeOpenAI) -> None:
    server.script(Answer(500, error_body("the GPU is on fire")))
    with pytest.raises(ModelUnreachable) as caught:
        backend(server, max_attempts=4).complete(chat_request())
    # Exactly 4 requests reached the server: the SDK's own retries are off.
    assert len(server.received) == 4
    message = str(caught.value)
    assert "\n" not in message
    assert server.url in message and "HTTP 500" in message and "after 4 attempts" in message
    assert "the GPU is on fire" in message


def test_the_time_budget_stops_retrying_before_the_attempts_run_out(server: FakeOpenAI) -> None:
    server.script(Answer(429, error_body("later"), {"retry-after": "5"}))
    started = time.monotonic()
    with pytest.raises(ModelUnreachable, match="HTTP 429"):
        backend(server, max_attempts=10, budget_s=2.0).complete(chat_request())
    assert time.monotonic() - started < 1.0  # a 5 s wait could not fit in the 2 s budget
    assert len(server.received) == 1


def test_401_fails_at_once_and_names_the_key_variable_not_the_key(server: FakeOpenAI) -> None:
    server.script(Answer(401, error_body(f"Incorrect API key provided: {API_KEY}")))
    with pytest.raises(ModelUnreachable) as caught:
        backend(server).complete(chat_request())
    assert len(server.received) == 1
    message = str(caught.value)
    assert "OPENAI_API_KEY" in message and server.url in message and "401" in message
    assert API_KEY not in message and API_KEY not in repr(caught.value)


def test_400_quotes_the_server_but_scrubs_the_key(server: FakeOpenAI) -> None:
    server.script(Answer(400, error_body(f"bad request from Bearer {API_KEY}: max_tokens is too large")))
    with pytest.raises(ModelUnreachable) as caught:
        backend(server).complete(chat_request())
    assert len(server.received) == 1
    message = str(caught.value)
    assert "max_tokens is too large" in message and "HTTP 400" in message
    assert API_KEY not in message


def test_a_prompt_too_long_for_the_servers_context_says_to_start_it_with_a_larger_one(server: FakeOpenAI) -> None:
    # llama-cpp-python's server words it this way when its context (2,048 by default) is too small.
    too_long = (
        "This model's maximum context length is 2048 tokens, however you requested 3554 tokens "
        "(2054 in your prompt; 1500 for the completion). Please reduce your prompt; or completion length."
    )
    server.script(Answer(400, error_body(too_long)))
    with pytest.raises(ModelUnreachable) as caught:
        backend(server).complete(chat_request())
    message = str(caught.value)
    assert "too small a context" in message and "--n_ctx 4096" in message and "2054 in your prompt" in message
    assert "check the model name" not in message
    assert len(server.received) == 1  # a request that cannot fit is not retried
    # A server whose context is already 4096 is told of a larger one (it was told "e.g. 4096").
    server.script(Answer(400, error_body(too_long.replace("2048", "4096"))))
    with pytest.raises(ModelUnreachable, match=r"e\.g\. 8192 tokens \(llama_cpp\.server --n_ctx 8192"):
        backend(server).complete(chat_request())


def test_404_names_the_missing_model(server: FakeOpenAI) -> None:
    server.script(Answer(404, error_body("model 'test-model' not found")))
    with pytest.raises(ModelUnreachable, match="no model 'test-model'"):
        backend(server).complete(chat_request())
    assert len(server.received) == 1


def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    chat = OpenAIBackend("test-model", base_url=url, max_attempts=2, backoff_s=0.01, budget_s=5.0)
    with pytest.raises(ModelUnreachable) as caught:
        chat.complete(chat_request())
    message = str(caught.value)
    assert url in message and "is the server running" in message and "after 2 attempts" in message
    assert API_KEY not in message


def test_no_key_and_no_base_url_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(UserError, match="set OPENAI_API_KEY, or pass --base-url"):
        OpenAIBackend("gpt-4o-mini")


def test_a_local_server_needs_no_key(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    local = OpenAIBackend("test-model")
    assert local.base_url == server.url
    assert local.complete(chat_request()).text == "ok"
    assert server.received[0].headers["authorization"].startswith("Bearer ")


def test_without_a_base_url_the_backend_talks_to_openai() -> None:
    assert OpenAIBackend("gpt-4o-mini").base_url == "https://api.openai.com/v1"


def test_retry_after_as_an_http_date_is_honoured(server: FakeOpenAI) -> None:
    # A date a minute ahead cannot fit in a 2 s budget: the backend gives up instead of retrying early.
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    server.script(Answer(429, error_body("later"), {"retry-after": later}), Answer(body=chat_body("ok")))
    with pytest.raises(ModelUnreachable, match="HTTP 429"):
        backend(server, max_attempts=10, budget_s=2.0).complete(chat_request())
    assert len(server.received) == 1


# -- streaming ------------------------------------------------------------------------------------


STREAMED = sse(
    chat_chunk("def score"),
    chat_chunk("(image, scene):\n"),
    chat_chunk("    return 1.0\n", "stop"),
    chat_chunk(None, usage=True),
)


def test_a_streamed_reply_arrives_piece_by_piece_and_adds_up(server: FakeOpenAI) -> None:
    server.script(Answer(body=STREAMED, content_type="text/event-stream"))
    pieces: list[str] = []
    reply = backend(server).complete(chat_request(), pieces.append)
    assert pieces == ["def score", "(image, scene):\n", "    return 1.0\n"]
    assert reply.text == "".join(pieces) and reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.estimated) == (11, 3, False)
    body = server.received[0].body
    assert body["stream"] is True
    assert "stream_options" not in body  # only OpenAI itself is asked for a stream's usage


def test_a_stream_without_usage_is_estimated(server: FakeOpenAI) -> None:
    server.script(Answer(body=sse(chat_chunk("hello"), chat_chunk(" there", "stop")), content_type="text/event-stream"))
    reply = backend(server).complete(chat_request(), lambda piece: None)
    assert reply.text == "hello there" and reply.usage.estimated


def test_a_streamed_completion_starts_with_the_prefix(server: FakeOpenAI) -> None:
    chunk = completion_body("    return 2.0\n") | {"usage": None}
    server.script(Answer(body=sse(chunk), content_type="text/event-stream"))
    pieces: list[str] = []
    request = chat_request(mode="completion", prompt="PROMPT def score():\n", reply_prefix="def score():\n")
    reply = backend(server).complete(request, pieces.append)
    assert pieces == ["def score():\n", "    return 2.0\n"]
    assert reply.text == "def score():\n    return 2.0\n"
    assert server.received[0].path == "/v1/completions"


def test_a_failure_before_the_first_piece_is_retried_and_shows_nothing_twice(server: FakeOpenAI) -> None:
    server.script(Answer(status=500, body=error_body("boom")), Answer(body=STREAMED, content_type="text/event-stream"))
    pieces: list[str] = []
    reply = backend(server).complete(chat_request(), pieces.append)
    assert len(server.received) == 2
    assert "".join(pieces) == reply.text == "def score(image, scene):\n    return 1.0\n"


def test_a_stream_that_breaks_off_is_not_retried(server: FakeOpenAI) -> None:
    cut = STREAMED.index("    return 1.0") + 5  # after the first two events, in the middle of the third
    server.script(Answer(body=STREAMED, content_type="text/event-stream", cut_after=cut))
    pieces: list[str] = []
    with pytest.raises(ModelUnreachable, match="broke off while streaming"):
        backend(server).complete(chat_request(), pieces.append)
    assert pieces == ["def score", "(image, scene):\n"]  # what was shown stays shown, once
    assert len(server.received) == 1


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [("o4-mini", True), ("o3", True), ("gpt-5-mini", True), ("gpt-5.1", True), ("openai/o1", True),
     ("gpt-4o-mini", False), ("gpt-4.1", False), ("orca-mini", False), ("gpt-oss:20b", False)],
)  # fmt: skip
def test_a_reasoning_model_gets_the_parameters_it_accepts(server: FakeOpenAI, model: str, reasoning: bool) -> None:
    server.script(Answer(body=chat_body("ok") | {"model": model}))
    reasoner = OpenAIBackend(model, base_url=server.url, max_attempts=1, timeout_s=5.0)
    reasoner.complete(chat_request(temperature=0.2, max_tokens=1500, seed=3))
    body = server.received[0].body
    assert body["seed"] == 3
    if reasoning:  # it refuses temperature and max_tokens, and its reasoning counts against the budget
        assert "temperature" not in body and "max_tokens" not in body
        assert body["max_completion_tokens"] == 1500 + REASONING_HEADROOM_TOKENS
    else:
        assert (body["temperature"], body["max_tokens"]) == (0.2, 1500) and "max_completion_tokens" not in body


def _author_spurious_over_http(server: FakeOpenAI, demo: Path, run: Path, samples: int) -> subprocess.CompletedProcess:
    """`metricsmith author` of the fixtures' spurious-box idea, through the real SDK, against `server`."""
    import record_fixtures as fixtures

    command = [
        sys.executable, "-m", "agent.cli", "author", fixtures.SPURIOUS_IDEA, "--annotations", str(demo),
        "--backend", "openai", "--model", "test-model", "--base-url", server.url, "--target", "spurious",
        "--samples", str(samples), "--out", str(run), "--workers", "2",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})


def _replay(transcript: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "agent.cli", "replay", str(transcript), "--out", str(out), "--workers", "2"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_author_with_a_target_over_http_samples_improves_and_replays(server: FakeOpenAI, tmp_path: Path) -> None:
    """The usefulness loop through the real openai SDK against a scripted server on loopback."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transcripts"))
    import record_fixtures as fixtures

    demo = generate_demo_dataset(tmp_path / "demo", n_images=24, seed=0)
    fenced = fixtures.fenced
    # Round 1, two samples: neither clears the bar (saturation is the better). Round 2, an improvement
    # round of two samples: the centre-rim contrast clears it; the second sample repeats tried code.
    server.script(*(Answer(body=chat_body(fenced(code))) for code in (
        fixtures.SATURATION, fixtures.OVERLAP, fixtures.CENTRE_RIM, fixtures.SATURATION,
    )))  # fmt: skip
    run = tmp_path / "run"
    done = _author_spurious_over_http(server, demo, run, samples=2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(server.received) == 4
    seeds = [received.body.get("seed") for received in server.received]
    assert seeds[0] != seeds[1] and seeds[2] != seeds[3], seeds
    improve = server.received[2].body["messages"][-1]["content"]
    assert "does not yet find the label errors" in improve and fixtures.SATURATION.strip() in improve
    # The improvement builds on the sample that was kept: the conversation holds saturation, not overlap.
    assistant = [m["content"] for m in server.received[2].body["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 1 and "less colourful" in assistant[0]
    assert "keeping sample 1 of 2" in done.stderr and "clears its bar" in done.stderr
    assert "usefulness (an estimate on injected errors" in done.stdout
    # No key in what was written.
    assert API_KEY not in (run / "transcript.jsonl").read_text()

    again = _replay(run / "transcript.jsonl", tmp_path / "again")
    assert again.returncode == 0 and "same outcome as recorded: passed after 4 exchanges" in again.stdout, (
        again.stdout + again.stderr
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[::1/v1", "Invalid IPv6 URL"),
        ("ftp://host/v1", "it must start with http:// or https://"),
        ("not a url", "it must start with http:// or https://"),
        ("http://host:99999/v1", "Port out of range 0-65535"),
        ("http:///v1", "it names no host"),
    ],
)
def test_a_url_no_request_can_go_to_is_refused_before_any_request(
    url: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Retried five times as a dead server, or raised inside the HTTP client as an internal error.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    with pytest.raises(UserError, match=re.escape(f"--base-url {url!r} is not a server URL: {problem}")):
        OpenAIBackend("m", base_url=url)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(UserError, match=re.escape(f"OPENAI_BASE_URL {url!r} is not a server URL")):
        OpenAIBackend("m")


def test_a_server_that_drops_the_connection_mid_reply_is_not_called_unreachable(server: FakeOpenAI) -> None:
    # It was "cannot connect ... is the server running and the URL right?", which sent the user to the wrong fix.
    server.script(Answer(body=chat_body("x" * 200), cut_after=40))
    with pytest.raises(ModelUnreachable) as caught:
        backend(server, max_attempts=2).complete(chat_request())
    assert "closed the connection in the middle of its reply" in str(caught.value), str(caught.value)


def test_a_key_the_server_echoes_into_the_reply_reaches_no_file_and_the_run_still_replays(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    # The transcript was scrubbed, but the candidate's metric.py and rationale.md kept the key (and approving
    # would have put it in the library); the scrubbed transcript then replayed to another code hash. A lone
    # surrogate (a JSON escape no UTF-8 file can hold) ended the run in an internal error.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transcripts"))
    import record_fixtures as fixtures

    demo = generate_demo_dataset(tmp_path / "demo", n_images=24, seed=0)
    code = fixtures.CENTRE_RIM.replace("\n", f"  # request key {API_KEY}\n", 1)
    prose = f"Here it is (proxy debug: Authorization: Bearer {API_KEY}) \ud800."
    server.script(Answer(body=chat_body(fixtures.fenced(code, prose))))
    run = tmp_path / "run"
    done = _author_spurious_over_http(server, demo, run, samples=1)
    assert done.returncode == 0, done.stdout + done.stderr
    written = [path for path in run.rglob("*") if path.is_file()]
    assert any(path.name == "metric.py" for path in written) and any(p.name == "rationale.md" for p in written)
    for path in written:
        assert "SECRET" not in path.read_text(errors="replace"), path
    assert "SECRET" not in done.stdout + done.stderr
    again = _replay(run / "transcript.jsonl", tmp_path / "again")
    assert again.returncode == 0 and "same outcome as recorded" in again.stdout, again.stdout + again.stderr


def test_a_stream_of_keep_alives_alone_is_a_timeout_not_a_wait_for_ever(server: FakeOpenAI) -> None:
    # Comments (": keep-alive") kept each read within the HTTP client's timeout: the chat waited for ever.
    keep_alives = ": keep-alive\n\n" * 400
    server.script(Answer(body=keep_alives, content_type="text/event-stream", drip_s=0.01))
    pieces: list[str] = []
    started = time.monotonic()
    with pytest.raises(ModelUnreachable, match="did not answer in time"):
        backend(server, timeout_s=0.5, max_attempts=2).complete(chat_request(), pieces.append)
    assert time.monotonic() - started < 3, "it waited on the keep-alives"
    assert pieces == [] and len(server.received) == 2  # nothing shown, so the attempt was retried


def test_a_stream_that_drips_past_the_timeout_ends_where_it_got_to(server: FakeOpenAI) -> None:
    server.script(Answer(body=STREAMED, content_type="text/event-stream", drip_s=0.004))  # an event in 0.7 s
    pieces: list[str] = []
    started = time.monotonic()
    with pytest.raises(ModelUnreachable, match="broke off while streaming"):
        backend(server, timeout_s=2.0).complete(chat_request(), pieces.append)  # the whole stream takes 3.1 s
    assert time.monotonic() - started < 4
    assert pieces and "".join(pieces) != "def score(image, scene):\n    return 1.0\n"  # a part, shown once
    assert len(server.received) == 1


def test_a_refusal_is_the_reply_not_an_empty_one(server: FakeOpenAI) -> None:
    # It was reported as an empty reply "(a base model without a chat template ...)", the refusal lost.
    body = chat_body(None)
    body["choices"][0]["message"]["refusal"] = "I'm sorry, but I can't help with that request."
    server.script(Answer(body=body))
    reply = backend(server).complete(chat_request())
    assert reply.text == "I'm sorry, but I can't help with that request."


def test_a_429_asking_to_wait_longer_than_we_would_fails_at_once_saying_how_long(server: FakeOpenAI) -> None:
    # It retried, each wait capped, for four silent minutes, and then never said the server asked for 28 hours.
    server.script(Answer(429, error_body("slow down"), {"retry-after": "100000"}))
    started = time.monotonic()
    with pytest.raises(ModelUnreachable, match=r"asks to wait 27\.8 h before the next request \(HTTP 429\)"):
        backend(server).complete(chat_request())
    assert time.monotonic() - started < 2 and len(server.received) == 1


def test_a_reply_far_past_max_tokens_is_cut_and_marked_cut(server: FakeOpenAI) -> None:
    # A server that ignored max_tokens sent 50 MB: stored whole twice (transcript, rationale) and shown by review.
    from agent.llm.model import MAX_REPLY_CHARS

    server.script(Answer(body=chat_body("def score(image, scene):\n    return 1.0\n" + "x" * (2 * MAX_REPLY_CHARS))))
    reply = backend(server).complete(chat_request())
    assert len(reply.text) == MAX_REPLY_CHARS and reply.finish_reason == "length"
    assert reply.text.startswith("def score(image, scene):")
