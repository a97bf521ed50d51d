"""Errors grouped by who must act on them.

Each carries the one line the user reads. The CLI turns them into that line and an exit code;
nothing below the CLI prints or exits.
"""

from __future__ import annotations


class MetricsmithError(Exception):
    """Base class: `str(error)` is the complete one-line message for the user."""


class UserError(MetricsmithError):
    """The user's input or configuration is wrong: a file, a flag, a dataset. Exit code 2."""


class EnvironmentProblem(MetricsmithError):
    """The machine lacks something the user asked for (an isolation layer, a package). Exit code 2."""
