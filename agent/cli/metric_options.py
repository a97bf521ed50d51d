"""What the commands that run metrics share: the --library option, loading --metric references, scoring
with a progress bar."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from agent.cli.console import stderr
from agent.data.coco import Dataset
from agent.errors import UserError
from agent.metrics.contract import MetricSpec
from agent.metrics.library import resolve_metrics
from agent.metrics.scoring import ScoreRow, score_dataset
from sandbox.isolation import SandboxConfig

__all__ = ["ProgressBar", "add_library_option", "load_metrics", "score_in_sandbox"]


def add_library_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--library",
        type=Path,
        help="metric library folder for lib:NAME (default: $METRICSMITH_LIBRARY or ./metricsmith-library)",
    )


def load_metrics(refs: list[str], library: Path | None = None) -> list[MetricSpec]:
    resolved = [(ref, spec) for ref in refs for spec in resolve_metrics(ref, library)]
    specs = [spec for _, spec in resolved]
    seen: dict[str, str] = {}
    for ref, spec in resolved:
        if spec.name in seen:
            raise UserError(f"{ref}: metric name {spec.name!r} is already used by {seen[spec.name]}")
        seen[spec.name] = ref
    return specs


def score_in_sandbox(dataset: Dataset, specs: list[MetricSpec], workers: int) -> list[ScoreRow]:
    """Score the metric files with a progress bar; Ctrl-C raises KeyboardInterrupt (exit 130) once workers stop."""
    with ProgressBar() as (progress, advance):
        outcome = score_dataset(dataset, specs, SandboxConfig(workers=workers), on_rows=lambda rows: advance(len(rows)))
        progress.stop()
    for name, error in outcome.metric_errors.items():
        stderr.print(f"[red]metric {escape(name)} failed to load[/]:\n{escape(error)}", markup=True)
    if outcome.interrupted:
        raise KeyboardInterrupt
    return outcome.rows


class ProgressBar:
    """A progress bar on a terminal; nothing when stderr is not one."""

    def __enter__(self) -> tuple[Progress, Callable[[int], None]]:
        """(the bar, `advance(count)`: `count` more rows done)."""
        self.progress = Progress(
            TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=stderr,
            disable=not stderr.is_terminal, transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task("scoring", total=None)
        self.progress.start()
        return self.progress, lambda count: self.progress.advance(self.task, count)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
