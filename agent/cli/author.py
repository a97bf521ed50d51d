"""`metricsmith author` and `metricsmith replay`, registered by agent.cli."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape

from agent.authoring.job import (
    AuthorJob,
    authoring_settings,
    default_backend,
    describe_event,
    describe_rounds,
    job_settings_from_transcript,
    make_backend,
    materialise,
    recorded_outcome,
    run_author_job,
)
from agent.authoring.loop import AuthoringOutcome, AuthoringSettings, idea_from_text, model_defaults
from agent.authoring.usefulness_check import Usefulness
from agent.cli.console import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    new_run_dir,
    non_negative_int,
    positive_int,
    seconds,
    stderr,
    stdout,
    temperature,
    worker_count,
)
from agent.data.json_files import read_text_file
from agent.errors import UserError
from agent.evaluation.usefulness import parse_targets
from agent.llm.backends.replay import ReplayBackend
from agent.llm.model import ModelBackend
from agent.llm.pricing import cost_usd
from agent.llm.transcript import read_transcript
from agent.sessions.chat_replay import is_chat_transcript, replay_chat

__all__ = ["add_model_options", "backend_from_args", "cmd_author", "cmd_replay", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    author = commands.add_parser("author", help=cmd_author.__doc__, description=cmd_author.__doc__)
    author.add_argument("idea", help='what the metric should find, e.g. "boxes that are not on a panda"')
    author.add_argument("--annotations", required=True, type=Path, help="COCO JSON file")
    author.add_argument("--images", type=Path, help="image folder (default: the JSON's folder or its images/)")
    described = author.add_mutually_exclusive_group()
    described.add_argument("--description", default="", help="what the dataset is, in your words")
    described.add_argument("--description-file", type=Path, help="the same, from a file")
    add_model_options(author)
    author.add_argument("--errors", type=Path, help="errors.json of known label errors: adds eval figures")
    author.add_argument(
        "--target",
        type=_targets,
        help="what the idea should catch: error types (swap,shift,loose,tight,spurious,duplicate,drop) or property;"
        " error types are injected into a sample of your data and the candidate measured on them (default: the"
        " model proposes them, on the record)",
    )
    author.add_argument(
        "--samples",
        type=positive_int,
        help="best-of-N: replies per round, the best on the selection half kept (with --target; default 8 for a"
        " grammar-held model, else 1)",
    )
    author.add_argument(
        "--max-improvements",
        type=non_negative_int,
        default=AuthoringSettings().max_improvements,
        help="rounds for a draft that runs but misses its target (with --target; default 2)",
    )
    author.add_argument(
        "--keep-unproven",
        action="store_true",
        help="when no draft clears its target, leave the best as a candidate marked 'runs, not shown useful'",
    )
    author.add_argument("--max-repairs", type=non_negative_int, default=3, help="repair rounds per draft (default 3)")
    author.add_argument("--max-drafts", type=positive_int, default=2, help="fresh drafts (default 2)")
    author.add_argument("--max-tokens-per-idea", type=positive_int, default=AuthoringSettings().token_cap)
    author.add_argument("--temperature", type=temperature, default=AuthoringSettings().temperature)
    author.add_argument("--max-tokens", type=positive_int, help="reply budget per exchange (default 1500; local 512)")
    author.add_argument("--workers", type=worker_count, help="sandbox worker processes")
    author.add_argument("--library", type=Path, help="library folder (default: $METRICSMITH_LIBRARY)")
    author.add_argument("--out", type=Path, help="run directory (default: runs/IDEA-NAME-N)")
    author.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    author.set_defaults(handler=cmd_author)

    replay = commands.add_parser("replay", help=cmd_replay.__doc__, description=cmd_replay.__doc__)
    replay.add_argument("transcript", type=Path, help="a recorded transcript (JSONL)")
    replay.add_argument("--annotations", type=Path, help="the dataset, when the recorded path is gone")
    replay.add_argument("--out", type=Path, help="run directory (default: a temporary folder)")
    replay.add_argument(
        "--library",
        type=Path,
        help="where the library versions the recording pins are (default: $METRICSMITH_LIBRARY or "
        "./metricsmith-library); a recording that pins none needs no library",
    )
    replay.add_argument("--workers", type=worker_count, help="sandbox worker processes")
    replay.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    replay.set_defaults(handler=cmd_replay)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose the model: shared by `author` and `chat`."""
    parser.add_argument(
        "--backend",
        choices=["openai", "local", "replay"],
        help="default: openai when OPENAI_BASE_URL, OPENAI_API_KEY or --base-url is set, else the local model",
    )
    parser.add_argument("--model", help="openai: the model name")
    parser.add_argument("--base-url", help="openai: an OpenAI-compatible server (Ollama, vLLM, llama.cpp ...)")
    parser.add_argument("--model-path", type=Path, help="local: a GGUF file (default: the embedded Gemma 3 270M)")
    parser.add_argument("--completion", action="store_true", help="openai: use the completions endpoint (base models)")
    parser.add_argument(
        "--request-timeout",
        type=seconds,
        metavar="SECONDS",
        help="openai: seconds to wait for one reply (default 60 against OpenAI, 300 against other servers)",
    )
    parser.add_argument("--transcript", type=Path, help="replay: the recording to play")
    parser.add_argument(
        "--grammar",
        action=argparse.BooleanOptionalAction,
        help="completion mode: hold the model's code to a grammar of valid metric code "
        "(default: on for the local model; an openai server must accept llama.cpp's `grammar` field)",
    )


def backend_from_args(args: argparse.Namespace) -> ModelBackend:
    """The backend the options of `add_model_options` ask for."""
    return make_backend(
        args.backend or default_backend(args.base_url),
        model=args.model,
        base_url=args.base_url,
        model_path=args.model_path,
        transcript=args.transcript,
        mode="completion" if args.completion else None,
        request_timeout_s=args.request_timeout,
    )


def _progress(event: str, data: dict[str, Any]) -> None:
    """One line on stderr per step of the loop, so a slow local model never looks stuck."""
    line = describe_event(event, data)
    if line is not None:  # describe_event's markup, its values escaped
        stderr.print(line, markup=True)


def _report(outcome: AuthoringOutcome, run_dir: Path) -> None:
    for line in describe_rounds(outcome):
        stdout.print(line, markup=False)
    if outcome.tokens:
        estimated = " (estimated)" if outcome.tokens_estimated else ""
        stdout.print(f"tokens: {outcome.tokens}{estimated}")
    if outcome.candidate is not None:
        candidate = outcome.candidate
        where = escape(f"{run_dir}/candidates/{candidate.id}")
        stdout.print(f"[green]candidate {escape(candidate.id)}[/] is pending review in {where}", markup=True)
        if candidate.evaluation:
            figures = candidate.evaluation["evaluation"]
            by_type = ", ".join(f"{t} {v:.3f}" for t, v in figures["ap_by_type"].items() if v is not None)
            stdout.print(f"eval: AP {figures['ap']:.3f} ({by_type})" if figures["ap"] is not None else "eval: no AP")
        if candidate.usefulness:
            summary = Usefulness.model_validate(candidate.usefulness).summary()
            stdout.print(f"usefulness (an estimate on injected errors, on the half no choice was made on): {summary}",
                         markup=False)  # fmt: skip
        stdout.print(f"review it: metricsmith review {run_dir}   (or: metricsmith approve {run_dir} {candidate.id})")
    else:
        stdout.print(f"[red]gave up[/]: {escape(outcome.reason)}", markup=True)
        stdout.print(f"the attempts and the transcript are in {run_dir}")


def _targets(text: str) -> tuple[str, ...]:
    try:
        return parse_targets(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_author(args: argparse.Namespace) -> int:
    """Write one metric for an idea: draft, validate in the sandbox, repair; leave a pending candidate.

    Exit codes: 0 a candidate passed validation; 1 the loop gave up; 2 usage; 3 the model was unreachable.
    """
    if args.max_repairs < 0:
        raise UserError("--max-repairs must be 0 or more")
    if args.max_improvements < 0:
        raise UserError("--max-improvements must be 0 or more")
    description = (
        read_text_file(args.description_file, "the --description-file") if args.description_file else args.description
    )
    backend = backend_from_args(args)
    settings = AuthoringSettings(
        **model_defaults(backend, grammar=args.grammar, max_tokens=args.max_tokens, samples=args.samples),
        max_repairs=args.max_repairs,
        max_improvements=args.max_improvements,
        keep_unproven=args.keep_unproven,
        max_drafts=args.max_drafts,
        token_cap=args.max_tokens_per_idea,
        temperature=args.temperature,
        targets=args.target or (),
        propose_targets=not args.target,
    )
    run_dir = args.out or new_run_dir(idea_from_text(args.idea).name)
    stderr.print(f"authoring with {backend.name} ({backend.model}, {backend.mode} mode) into {run_dir}")
    outcome = run_author_job(
        AuthorJob(
            idea=args.idea,
            annotations=args.annotations,
            images=args.images,
            run_dir=run_dir,
            backend=backend,
            description=description,
            errors=args.errors,
            settings=settings,
            library=args.library,
            workers=args.workers,
        ),
        listener=_progress,
    )
    if isinstance(backend, ReplayBackend):
        backend.finish()
    _report(outcome, run_dir)
    price = cost_usd(backend.model, outcome.usage) if backend.name == "openai" else None
    if price is not None:
        stdout.print(f"cost: about ${price:.4f} at {backend.model}'s list price")
    return EXIT_OK if outcome.verdict == "passed" else EXIT_SOME_FAILED


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-run a recorded `author` or `chat` session offline and check it reaches the same outcome.

    Every request must match the recording, in order; a changed prompt template is named in the
    error. Exit 0 when the outcome is the same, 1 when it differs, 2 on a mismatch or bad input.
    """
    transcript = read_transcript(args.transcript)
    if is_chat_transcript(transcript):
        same = replay_chat(
            transcript, stdout, out=args.out, annotations=args.annotations, workers=args.workers, library=args.library
        )
        return EXIT_OK if same else EXIT_SOME_FAILED
    settings = job_settings_from_transcript(transcript)
    if args.annotations is not None:
        annotations, images, errors = args.annotations, None, None
    else:
        annotations, images, errors = materialise(settings.dataset)
    backend = ReplayBackend(transcript)
    run_dir = args.out or Path(tempfile.mkdtemp(prefix="metricsmith-replay-"))
    if args.out is None:
        run_dir.rmdir()  # run_author_job wants to create it itself
    outcome = run_author_job(
        AuthorJob(
            idea=settings.idea,
            annotations=annotations,
            images=images,
            run_dir=run_dir,
            backend=backend,
            description=settings.description,
            errors=errors,
            settings=authoring_settings(settings.authoring),
            validation_size=settings.validation_size,
            library=args.library,
            pinned_library=tuple(settings.library),
            workers=args.workers,
            origin=transcript.meta.origin,
        ),
        listener=_progress,
    )
    backend.finish()
    recorded = recorded_outcome(transcript)
    replayed = {
        "verdict": outcome.verdict,
        "code_sha256": outcome.candidate.code_sha256 if outcome.candidate else None,
    }
    _report(outcome, run_dir)
    if recorded is None:
        stdout.print("the recording has no outcome (the session was cut short); nothing to compare")
        return EXIT_SOME_FAILED
    expected = {"verdict": recorded.get("verdict"), "code_sha256": recorded.get("code_sha256")}
    if replayed != expected:
        stdout.print(
            f"[red]different outcome[/]: recorded {escape(str(expected))}, replayed {escape(str(replayed))}",
            markup=True,
        )
        return EXIT_SOME_FAILED
    stdout.print(f"same outcome as recorded: {outcome.verdict} after {outcome.exchanges} exchanges")
    return EXIT_OK
