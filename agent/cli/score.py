"""`metricsmith score`: every metric over every item of a dataset, in the sandbox, written as rows."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from agent.cli.console import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    megabytes,
    positive_int,
    print_warnings,
    seconds,
    stderr,
    worker_count,
)
from agent.cli.metric_options import ProgressBar, add_library_option, load_metrics
from agent.data.coco import Dataset, load_coco
from agent.errors import EnvironmentProblem, UserError
from agent.metrics.contract import MetricSpec, list_builtin_metrics
from agent.metrics.parts import PartWriter, check_directory, is_parts_directory
from agent.metrics.results import Journal, check_output_folder, output_format, write_rows
from agent.metrics.scoring import ScoreOutcome, failure_lines, score_dataset
from sandbox.engine import Engine, ScoringEngine
from sandbox.isolation import SandboxConfig

__all__ = ["cmd_score", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser("score", help=cmd_score.__doc__, description=cmd_score.__doc__)
    score.add_argument("--annotations", required=True, type=Path, help="COCO JSON file")
    score.add_argument("--images", type=Path, help="image folder (default: the JSON's folder or its images/)")
    score.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="metric file or builtin:NAME (repeatable; default: every built-in metric)",
    )
    score.add_argument(
        "--out",
        required=True,
        metavar="FILE|DIR/",
        help="results: a .csv, .jsonl or .parquet file, or DIR/ (ending in /, or an empty directory) for a "
        "directory of Parquet parts that reads as one table; with --engine ray the actors write the parts "
        "themselves, so the rows never gather on this machine",
    )
    score.add_argument(
        "--workers", type=worker_count, default=None, help="worker processes (default: one per CPU; --engine local)"
    )
    score.add_argument("--timeout", type=seconds, default=10.0, help="seconds per score() call")
    score.add_argument("--memory", type=megabytes, default=2048, help="MB each worker may allocate")
    score.add_argument(
        "--require-isolation", action="store_true", help="refuse to run unless Landlock, seccomp and bwrap all hold"
    )
    score.add_argument(
        "--separate-workers",
        action="store_true",
        help="give each metric workers of its own, so an untrusted metric can't alter the others' scores "
        "(slower: each image is decoded once per metric)",
    )
    score.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: worker processes on this machine; ray: a Ray cluster's actors, one sandboxed worker each "
        "(needs metricsmith[ray])",
    )
    score.add_argument(
        "--address",
        help="with --engine ray: the cluster's HOST:PORT, as `ray start --head` printed it "
        "(default: start a local Ray for this run)",
    )
    score.add_argument(
        "--workers-per-node",
        type=positive_int,
        help="with --engine ray: sandboxed workers on each node (default: one per CPU; instead of --workers)",
    )
    add_library_option(score)
    score.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    score.set_defaults(handler=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    """Run metric files over a COCO dataset in the sandbox and write one row per (metric, item)."""
    out = Path(args.out)
    parts = is_parts_directory(args.out)
    if parts:
        check_directory(out)
    else:
        output_format(out)
        check_output_folder(out)
    if out.resolve() == Path(args.annotations).resolve():
        raise UserError(f"--out {out} is the annotations file: the scores would replace your dataset; choose another")
    engine, session = _engine(args)
    specs = load_metrics(args.metrics, args.library) if args.metrics else list_builtin_metrics()
    if not specs:
        raise UserError("no metrics given and no built-in metrics installed; pass --metric FILE")
    dataset = load_coco(args.annotations, args.images)
    print_warnings(args.annotations, dataset.warnings)
    config = SandboxConfig(
        workers=args.workers or os.cpu_count() or 1,
        timeout_s=args.timeout,
        memory_mb=args.memory,
        require_isolation=args.require_isolation,
        share_workers=not args.separate_workers,
    )
    if parts:
        outcome = _score_to_parts(out, dataset, specs, config, engine, session)
    else:
        journal = Journal(out)
        if journal.kept is not None:
            stderr.print(
                f"note: an earlier run into {out} stopped before it finished; its rows are kept in {journal.kept}",
                markup=False,
            )
        with session, ProgressBar() as (progress, advance):
            outcome = score_dataset(
                dataset, specs, config, on_rows=lambda rows: (journal.append(rows), advance(len(rows))), engine=engine
            )
            progress.stop()
        write_rows(out, outcome.rows)
        journal.discard()
    shown = f"{out}/" if parts else str(out)
    _print_summary(outcome, shown)
    if outcome.interrupted:
        stderr.print(f"interrupted: wrote the {outcome.row_count} of {outcome.expected_rows} rows scored to {shown}")
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if outcome.failed else EXIT_OK


def _score_to_parts(
    out: Path,
    dataset: Dataset,
    specs: list[MetricSpec],
    config: SandboxConfig,
    engine: Callable[[SandboxConfig], Engine],
    session: AbstractContextManager[object],
) -> ScoreOutcome:
    """Score with the rows written as parts of `out` as they come (by the actors, under Ray); nothing gathered here."""
    writer = PartWriter.create(out, specs, dataset)
    try:
        with session, ProgressBar() as (progress, advance):
            outcome = score_dataset(
                dataset,
                specs,
                config,
                on_rows=lambda rows: advance(len(rows)),
                engine=engine,
                writer=writer,
                on_written=advance,
            )
            progress.stop()
    finally:
        writer.finish()
    return outcome


def _engine(args: argparse.Namespace) -> tuple[Callable[[SandboxConfig], Engine], AbstractContextManager[object]]:
    """The engine --engine names, and the session it runs in; its options checked before any scoring starts."""
    if args.engine == "local":
        for flag, value in (("--address", args.address), ("--workers-per-node", args.workers_per_node)):
            if value is not None:
                raise UserError(f"{flag} goes with --engine ray")
        return ScoringEngine, contextlib.nullcontext()
    if args.workers is not None:
        # Silently ignored, it would look like it worked: each node's workers are --workers-per-node's.
        raise UserError("--workers goes with --engine local; with --engine ray, give --workers-per-node")
    if importlib.util.find_spec("ray") is None:
        raise EnvironmentProblem("--engine ray needs Ray on this machine: pip install 'metricsmith[ray]'")
    # Ray loads only for a Ray run: importing it costs a second, and it is an optional extra.
    from sandbox.distributed import RayEngine, connected

    # One connection for the whole job: the scoring and the feature metrics' neighbour search both use it.
    engine = functools.partial(RayEngine, address=args.address, workers_per_node=args.workers_per_node)
    return engine, connected(args.address)


def _print_summary(outcome: ScoreOutcome, out: str) -> None:
    table = Table("metric", "level", "scored", "n/a", "failed", "min", "median", "max", title=f"wrote {out}")
    table.columns[0].no_wrap = True
    for summary in outcome.summaries:
        failures = ", ".join(f"{count} {kind}" for kind, count in summary.failure_counts()) or "0"
        quantiles = summary.quantiles()
        cells = [f"{value:.4g}" for value in quantiles] if quantiles else ["-", "-", "-"]
        table.add_row(summary.name, summary.level, str(summary.scored), str(summary.not_applicable), failures, *cells)
    stderr.print(table)
    # The table only counts failures; without an example the user must dig the traceback out of the file.
    for summary in outcome.summaries:
        for line in failure_lines(summary, stderr.width):
            stderr.print(line, markup=False)
        if summary.note is not None:
            stderr.print(f"{summary.name}: {summary.note}", markup=False)
    for name, error in outcome.metric_errors.items():
        stderr.print(f"[red]metric {escape(name)} failed to load[/]:\n{escape(error)}", markup=True)
    active = [layer.name for layer in outcome.layers if layer.active]
    inactive = [layer.name for layer in outcome.layers if not layer.active]
    line = f"sandbox: {', '.join(active) or 'no kernel layers'} active"
    if inactive:
        line += f"; not active: {', '.join(inactive)} (see `metricsmith doctor`)"
    stderr.print(line)
