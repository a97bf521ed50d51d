"""The `metricsmith` command line: parse, call one function of the agent layer, render.

Commands load lazily, the way pip maps each command name to its module: `COMMANDS` names each
command's module and its one-line summary, and only the module of the command being run is imported
(it registers its own parser). So `metricsmith --help` imports none of them, and `metricsmith score`
never imports openai, jinja2, prompt_toolkit or llama_cpp. A summary here must equal the first line
of the command function's docstring (tests/test_cli_layout.py checks it): the docstring is the help.

Errors become one line on stderr and an exit code here, and only here. `--debug` shows the
traceback as well.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import NamedTuple

from agent.cli.console import (
    EXIT_INFRASTRUCTURE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ArgumentParser,
    stderr,
)
from agent.cli.entry import no_lost_ctrl_c
from agent.data.coco import DatasetInvalid
from agent.errors import MetricsmithError
from agent.llm.model import ModelUnreachable
from agent.llm.transcript import scrub_text
from sandbox.engine import ClusterUnreachable, OutputUnwritable, WorkerStartFailed
from sandbox.isolation import IsolationUnavailable

__all__ = ["COMMANDS", "build_parser", "main"]


class Command(NamedTuple):
    module: str  # registers this command's parser (and its siblings') with `register(commands)`
    summary: str


COMMANDS: dict[str, Command] = {
    "score": Command(
        "agent.cli.score", "Run metric files over a COCO dataset in the sandbox and write one row per (metric, item)."
    ),
    "doctor": Command(
        "agent.cli.doctor", "Report which sandbox layers are active on this machine and what is left unprotected."
    ),
    "demo-data": Command(
        "agent.cli.demo", "Generate a small procedural COCO dataset (pandas, bears, foxes) to try metricsmith on."
    ),
    "inject": Command(
        "agent.cli.inject",
        "Write a copy of a COCO dataset with known label errors: annotations.json, errors.json, ids.json, images/.",
    ),
    "selftest": Command(
        "agent.cli.selftest",
        "Estimate how well metrics find label errors in your data: inject known errors, score, measure, over seeds.",
    ),
    "eval": Command(
        "agent.cli.evaluate",
        "Measure how well metrics rank the known label errors of errors.json first (AP, AUROC, P@K, recall).",
    ),
    "report": Command(
        "agent.cli.evaluate",
        "Write one self-contained HTML page: per metric a histogram with outlier fences and the top and bottom items.",
    ),
    "triage": Command(
        "agent.cli.triage",
        "Rank every box and image by how likely its label is wrong, with reasons, and export the queue for review.",
    ),
    "library": Command(
        "agent.cli.library",
        "The metrics you can use: built-ins (--metric builtin:NAME) and promoted ones (--metric lib:NAME[@VERSION]).",
    ),
    "approve": Command(
        "agent.cli.gate",
        "Approve a pending candidate's current code (bound to its sha256) and promote it into the library.",
    ),
    "reject": Command("agent.cli.gate", "Reject a pending candidate, with the reason."),
    "author": Command(
        "agent.cli.author",
        "Write one metric for an idea: draft, validate in the sandbox, repair; leave a pending candidate.",
    ),
    "replay": Command(
        "agent.cli.author",
        "Re-run a recorded `author` or `chat` session offline and check it reaches the same outcome.",
    ),
    "batch": Command(
        "agent.cli.batch",
        "Author every idea of a config file (or N brainstormed ones), concurrently; resumable after any crash.",
    ),
    "review": Command(
        "agent.cli.batch",
        "Go through the pending candidates of a run: approve, reject with a reason, edit, or skip each.",
    ),
    "chat": Command(
        "agent.cli.chat",
        "Talk with the model about a dataset, brainstorm metric ideas, write and review them, in one session.",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the full one for `command`, and for every other command a stub that only shows its summary."""
    parser = ArgumentParser(
        prog="metricsmith", description="Write, run and measure data-quality metrics for CV datasets."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command].module).register(commands)
    for name, entry in COMMANDS.items():
        if name not in commands.choices:
            commands.add_parser(name, help=entry.summary, description=entry.summary)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option (the top level has only flags)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def run_command(args: argparse.Namespace) -> int:
    return int(args.handler(args))


def _while_writing(error: OSError, args: argparse.Namespace | None) -> str:
    """Where a full disk was hit, when the error can't say: a write to an open file names no path."""
    if error.filename or error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    out = getattr(args, "out", None)
    return f" (while writing {out}; free space on its disk, or choose another --out)" if out else " (while writing)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args: argparse.Namespace | None = None
    try:
        with no_lost_ctrl_c():
            args = build_parser(_command_named(argv)).parse_args(argv)
            return run_command(args)
    except DatasetInvalid as error:
        stderr.print(f"error: {scrub_text(str(error))}", markup=False)
        for line in error.details()[1:]:
            stderr.print(f"  {scrub_text(line)}", markup=False)
        return EXIT_USAGE
    except (ModelUnreachable, ClusterUnreachable) as error:  # the environment's, not the user's input: own exit code
        if debug:
            traceback.print_exc()
        stderr.print(f"error: {scrub_text(str(error))}", markup=False)
        return EXIT_INFRASTRUCTURE
    except (MetricsmithError, IsolationUnavailable, WorkerStartFailed, OutputUnwritable) as error:
        if debug:
            traceback.print_exc()
        stderr.print(f"error: {scrub_text(str(error))}", markup=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return EXIT_INTERRUPTED
    except OSError as error:  # a file we were told to read or write: the user's to fix
        if debug:
            traceback.print_exc()
        where = f"{error.filename}: " if error.filename else ""
        stderr.print(
            f"error: {scrub_text(f'{where}{error.strerror or error}{_while_writing(error, args)}')}", markup=False
        )
        return EXIT_USAGE
    except Exception as error:  # a bug in metricsmith: say so in one line, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        stderr.print(
            f"internal error: {type(error).__name__}: {scrub_text(str(error))} (rerun with --debug for the traceback, "
            "and report it)",
            markup=False,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
