"""`metricsmith selftest`: how well metrics find errors injected into your own data (an estimate)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich import box
from rich.table import Table

from agent.cli.console import (
    EXIT_OK,
    SHORT_TYPE_NAMES,
    positive_int,
    print_warnings,
    seed_count,
    stderr,
    stdout,
    worker_count,
)
from agent.cli.metric_options import ProgressBar, add_library_option, load_metrics
from agent.data.coco import coco_from_document, read_coco_json
from agent.data.inject import INJECT_TYPES
from agent.errors import UserError
from agent.evaluation.selftest import (
    ESTIMATE,
    WEAK_LIFT,
    BestForType,
    Figure,
    SelftestReport,
    best_by_type,
    run_selftest,
    sample_images,
)
from agent.metrics.library import library_metrics
from agent.metrics.scoring import require_an_image
from sandbox.isolation import SandboxConfig

__all__ = ["cmd_selftest", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    selftest = commands.add_parser("selftest", help=cmd_selftest.__doc__, description=cmd_selftest.__doc__)
    selftest.add_argument("--annotations", required=True, type=Path, help="COCO JSON file (left as it is)")
    selftest.add_argument("--images", type=Path, help="image folder (default: the JSON's folder or its images/)")
    selftest.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="metric file, builtin:NAME or lib:NAME (repeatable; default: the built-ins and the promoted library)",
    )
    selftest.add_argument("--seeds", type=seed_count, default=3, help="injections to average over (default 3)")
    selftest.add_argument("--rate", type=float, default=0.2, help="share of boxes given an error (default 0.2)")
    selftest.add_argument("--sample-images", type=positive_int, help="use this many images drawn at random, for speed")
    selftest.add_argument("--json", action="store_true", help="print the report as JSON (agent/evaluation/selftest.py)")
    selftest.add_argument("--workers", type=worker_count, default=os.cpu_count() or 1, help="worker processes")
    add_library_option(selftest)
    selftest.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    selftest.set_defaults(handler=cmd_selftest)


def cmd_selftest(args: argparse.Namespace) -> int:
    """Estimate how well metrics find label errors in your data: inject known errors, score, measure, over seeds.

    The figures are an estimate on injected errors (see `metricsmith inject`), not the truth about the
    errors your dataset really has. Per metric and error type: the mean AP over the seeds, its spread,
    a random ranking's AP and the lift over it.
    """
    if not 0 < args.rate < 1:
        raise UserError(f"--rate must be above 0 and below 1, got {args.rate}")
    if args.metrics:
        specs = load_metrics(args.metrics, args.library)
    else:
        _, specs = library_metrics(args.library)
    document = read_coco_json(args.annotations)
    dataset = coco_from_document(document, args.annotations, args.images)  # every problem of the input, first
    require_an_image(dataset)  # before the copies are made, not after: minutes on a large dataset
    print_warnings(args.annotations, dataset.warnings)  # once the input is known good: a refusal stays one line
    if args.sample_images:
        document = sample_images(document, args.sample_images)
    with ProgressBar() as (progress, _):
        report = run_selftest(
            document,
            args.annotations,
            dataset.image_root,
            specs,
            seeds=list(range(args.seeds)),
            rate=args.rate,
            sandbox=SandboxConfig(workers=args.workers),
            sample_images=len(document["images"]) if len(document["images"]) < len(dataset.images) else None,
            on_calls=lambda count: progress.advance(progress.task_ids[0], count),
        )
        progress.stop()
    if args.json:
        stdout.print_json(report.model_dump_json())
    else:
        _print_report(report)
    return EXIT_OK


def _shown(figure: Figure, spread: bool = True) -> str:
    if figure.mean is None:
        return "-"
    return f"{figure.mean:.3f}±{figure.spread:.3f}" if spread and figure.spread else f"{figure.mean:.3f}"


def _left_out(best: BestForType) -> str:
    """A type's left-out figure: mean AP, lift, and the picks when they were not all the overall best."""
    assert best.left_out is not None and best.left_out.mean is not None
    lift = f"{best.left_out.lift:.1f}x" if best.left_out.lift is not None else "-"
    picks = f"; picked {', '.join(best.left_out_picks)}" if best.picks_vary else ""
    return f"{best.error} {best.left_out.mean:.3f} ({lift}{picks})"


def _print_report(report: SelftestReport) -> None:
    types = [t for t in INJECT_TYPES if t in report.errors_by_type]
    title = (
        f"selftest: {ESTIMATE}. {report.images} images, {report.annotations} annotations; "
        f"{len(report.seeds)} seeds at rate {report.rate:g}. AP: mean±sd over seeds, per type the mean; "
        "lift: AP over random's"
    )
    # Per type only the mean, so the table fits 120 piped columns; --json has every seed's figure.
    headers = [SHORT_TYPE_NAMES.get(t, t) for t in types]
    table = Table(
        "metric", "level", "AP", "random", "lift", *headers, title=title, box=box.SIMPLE_HEAD, pad_edge=False,
        collapse_padding=True,
    )  # fmt: skip
    for column in table.columns:
        column.no_wrap = True
    for row in report.metrics:
        lift = f"{row.ap.lift:.2f}x" if row.ap.lift is not None else "-"
        random = f"{row.ap.random:.3f}" if row.ap.random is not None else "-"
        cells = [_shown(row.by_type[t], spread=False) if t in row.by_type else "-" for t in types]
        style = "dim" if row.metric in ("random", "combined", "rank_average") else None
        table.add_row(row.metric, "obj" if row.level == "object" else "img", _shown(row.ap), random, lift, *cells,
                      style=style)  # fmt: skip
    stdout.print(table)
    best = best_by_type(report)
    if best:
        # The table's takeaway: which metric to sort by for each kind of error, and where none helps much.
        picks = " · ".join(f"{b.error} {b.metric} {b.figure.mean:.3f} ({b.figure.lift:.1f}x)" for b in best)
        stdout.print(f"best per error type, by lift over random's AP: {picks}", markup=False, soft_wrap=True)
        unselected = " · ".join(_left_out(b) for b in best if b.left_out is not None and b.left_out.mean is not None)
        if unselected:
            # The best of many, on the seeds it is shown on, flatters: the same choice judged on a seed it never saw.
            stdout.print(
                f"picked on the other seeds, measured on the seed left out (each in turn): {unselected}",
                markup=False,
                soft_wrap=True,
            )
        weak = [b.error for b in best if (b.judged_lift or 0.0) < WEAK_LIFT]
        if weak:
            stdout.print(
                f"under {WEAK_LIFT:g}x random's AP at best: {', '.join(weak)}: no metric here finds "
                f"{'it' if len(weak) == 1 else 'them'} much better than chance",
                markup=False,
                soft_wrap=True,
            )
    for note in report.notes:
        stderr.print(f"note: {note}", markup=False)
