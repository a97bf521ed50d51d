"""What every command shares: exit codes, the two consoles, argument parsing that fails as a UserError."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

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
    "stderr",
    "stdout",
]

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
# The model or its server could not be reached: the environment's problem, not the user's input.
EXIT_INFRASTRUCTURE = 3

# Error types' column headers in the eval and selftest tables, short enough for 120 piped columns.
SHORT_TYPE_NAMES = {"spurious": "spur.", "duplicate": "dupl."}

# Piped output has no terminal width; 120 columns keep the tables readable in logs.
stderr = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 120)
stdout = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)


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
    return value
