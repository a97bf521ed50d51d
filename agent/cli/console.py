"""What every command shares: exit codes, the two consoles, argument parsing that fails as a UserError."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from agent.cli.entry import EXIT_INTERRUPTED  # defined where the command starts, before anything heavy
from agent.errors import UserError

__all__ = [
    "EXIT_INFRASTRUCTURE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "SHORT_TYPE_NAMES",
    "ArgumentParser",
    "new_run_dir",
    "positive_float",
    "positive_int",
    "print_warnings",
    "stderr",
    "stdout",
]

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70
# The model or its server could not be reached: the environment's problem, not the user's input.
EXIT_INFRASTRUCTURE = 3

# Error types' column headers in the eval and selftest tables, short enough for 120 piped columns.
SHORT_TYPE_NAMES = {"spurious": "spur.", "duplicate": "dupl."}

# Piped output has no terminal width; 120 columns keep the tables readable in logs. Markup is off unless a print
# asks for it (`markup=True`, its values escaped): most of what is shown is text from files, metrics and models,
# where a `[/i]` made rich raise and end the command, and a `[b]` vanished.
stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, width=None if sys.stderr.isatty() else 120)
stdout = Console(highlight=False, soft_wrap=True, markup=False, width=None if sys.stdout.isatty() else 120)


def print_warnings(source: Path | str, warnings: Sequence[object], limit: int = 10) -> None:
    """The first `limit` warnings about an input file (a dataset's missing images, boxes past a border), then a count.

    The commands that read the images, or link to them, show them (`score`, `inject`, `selftest`, `triage`):
    `inject` linked a copy to a folder holding none of the images without a word, and the user learned
    of it only when the copy was scored. `eval` reads no image, and `report` draws a placeholder for each missing one.
    """
    for warning in warnings[:limit]:
        stderr.print(f"[yellow]warning[/]: {escape(f'{source}: {warning}')}", markup=True)
    if len(warnings) > limit:
        stderr.print(f"[yellow]warning[/]: ... and {len(warnings) - limit} more warnings", markup=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake becomes a UserError: one line, exit code 2, like every other input error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def new_run_dir(prefix: str) -> Path:
    """The first free `runs/PREFIX-N`: each run keeps a folder of its own unless --out names one."""
    for index in range(1, 10_000):
        candidate = Path("runs") / f"{prefix}-{index}"
        if not candidate.exists():
            return candidate
    raise UserError("runs/ is full; pass --out")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def at_most(limit: int, why: str) -> Callable[[str], int]:
    """A positive whole number up to `limit`; `why` says where the limit comes from, in the error."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit} ({why}), got {value}")
        return value

    return parse


# Sandboxed worker processes: past a few per CPU they only cost their start (a second each on a small machine).
MOST_WORKERS = max(64, 4 * (os.cpu_count() or 1))
worker_count = at_most(MOST_WORKERS, "4 per CPU of this machine, or 64")
seed_count = at_most(100, "each seed is a whole noisy copy to score")


def seconds(text: str) -> float:
    """A time limit: positive, finite, at most a day (the timers that enforce it take no more)."""
    value = positive_float(text)
    if value > _DAY_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {_DAY_SECONDS} seconds (a day), got {text}")
    return value


def temperature(text: str) -> float:
    """A sampling temperature: a finite number from 0 to 2, the range the OpenAI API takes."""
    value = float(text)
    if not 0.0 <= value <= 2.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 2, got {text}")
    return value


def megabytes(text: str) -> int:
    """A worker's memory limit in MB: at least 64 (Python, numpy and OpenCV need that much), at most 1 TB."""
    value = positive_int(text)
    if not 64 <= value <= _MOST_MEGABYTES:
        raise argparse.ArgumentTypeError(f"must be between 64 and {_MOST_MEGABYTES} MB, got {value}")
    return value


_DAY_SECONDS = 86_400
_MOST_MEGABYTES = 1 << 20
