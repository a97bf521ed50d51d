"""`metricsmith eval` and `metricsmith report`: measure metrics against known label errors, and show them.

The report's renderer (jinja2) is imported by `cmd_report` when it runs, not here: this module is
loaded whenever either command is parsed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from rich import box
from rich.table import Table

from agent.cli.console import EXIT_OK, SHORT_TYPE_NAMES, positive_int, stderr, stdout, worker_count
from agent.cli.metric_options import add_library_option, load_metrics, score_in_sandbox
from agent.data.coco import Dataset, load_coco
from agent.errors import UserError
from agent.evaluation.ranking import (
    DEFAULT_BUDGET,
    Direction,
    EvaluationReport,
    GroundTruth,
    check_files,
    evaluate,
    failure_notes,
    ground_truth,
    load_error_labels,
    scores_from_rows,
)
from agent.evaluation.selftest import load_selftest
from agent.evaluation.triage import load_jsonl
from agent.metrics.contract import BUILTIN_PREFIX, MetricSpec, builtin_metric_names, load_metric_file
from agent.metrics.results import (
    RecordedMetric,
    check_output_folder,
    combine_recorded,
    distinct_score_files,
    read_rows,
    readable_format,
    recorded_metrics,
    scored_twice,
)
from agent.metrics.scoring import ScoreRow

__all__ = ["cmd_eval", "cmd_report", "register"]

EVAL_EPILOG = (
    "Object metrics are ranked over every annotation, image metrics over every image; a missing or failed "
    "score ranks last and ties earn no credit. A metric's direction comes from --direction NAME=high|low if "
    "given, else from the score file (which records it), its file (--metric) or, for score files written "
    "before metricsmith recorded directions, the built-in metric of that name. Baselines: `random`, `combined` (a "
    "logistic regression on the metrics' ranks, cross-validated by image) and `rank_average` (label-free). "
    "Exit 2 when the files do not belong together."
)


REPORT_EPILOG = (
    "Per metric: a histogram of the scores with IQR outlier fences (moderate 1.5, severe 2.5 IQR), the "
    "outlier counts on the suspicious side, and thumbnails of the top and bottom K items. With --errors, "
    "each thumbnail shows its true error type and each metric its eval table. Directions resolve as for eval. "
    "The page is self-contained: inline CSS and SVG, base64 images, nothing fetched."
)


def _direction(text: str) -> tuple[str, str]:
    name, _, direction = text.partition("=")
    if not name or direction not in ("high", "low"):
        raise argparse.ArgumentTypeError(f"expected NAME=high or NAME=low, got {text!r}")
    return name, direction


def register(commands: argparse._SubParsersAction) -> None:
    evaluation = commands.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__, epilog=EVAL_EPILOG)
    evaluation.add_argument("--annotations", required=True, type=Path, help="COCO JSON file (the noisy labels)")
    evaluation.add_argument("--errors", required=True, type=Path, help="errors.json listing the injected errors")
    evaluation.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        default=[],
        help="metric file or builtin:NAME to score in the sandbox, then evaluate (repeatable)",
    )
    evaluation.add_argument(
        "--scores",
        action="append",
        default=[],
        type=Path,
        help="results of `metricsmith score` (.csv, .jsonl, .parquet, a DIR/ of parts) to evaluate as is (repeatable)",
    )
    evaluation.add_argument(
        "--direction",
        action="append",
        default=[],
        type=_direction,
        metavar="NAME=high|low",
        help="use this SUSPICIOUS direction for metric NAME instead of the one its score file or metric file gives "
        "(needed only for score files written before metricsmith recorded directions)",
    )
    evaluation.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluation.add_argument("--images", type=Path, help="image folder for --metric (default: as for score)")
    evaluation.add_argument("--workers", type=worker_count, default=os.cpu_count() or 1, help="worker processes")
    add_library_option(evaluation)
    evaluation.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    evaluation.set_defaults(handler=cmd_eval)

    report = commands.add_parser(
        "report", help=cmd_report.__doc__, description=cmd_report.__doc__, epilog=REPORT_EPILOG
    )
    report.add_argument("--annotations", required=True, type=Path, help="COCO JSON file")
    report.add_argument("--images", type=Path, help="image folder (default: the JSON's folder or its images/)")
    report.add_argument(
        "--scores",
        action="append",
        default=[],
        type=Path,
        help="results of `metricsmith score` (.csv, .jsonl, .parquet, or a DIR/ of parts) (repeatable)",
    )
    report.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        default=[],
        help="metric file or builtin:NAME to score in the sandbox first (repeatable)",
    )
    report.add_argument(
        "--errors", type=Path, help="errors.json of known label errors: marks each item and adds the eval tables"
    )
    report.add_argument(
        "--selftest",
        type=Path,
        help="what `metricsmith selftest --json` wrote for this annotations file: adds its estimates",
    )
    add_library_option(report)
    report.add_argument(
        "--direction",
        action="append",
        default=[],
        type=_direction,
        metavar="NAME=high|low",
        help="use this SUSPICIOUS direction for metric NAME instead of the one recorded (as for eval)",
    )
    report.add_argument(
        "--triage", type=Path, help="triage.jsonl of `metricsmith triage` on this dataset: shows the top of its queue"
    )
    report.add_argument("--top", type=positive_int, default=8, help="items shown at each end per metric (default 8)")
    report.add_argument("--out", required=True, type=Path, help="the HTML file to write")
    report.add_argument("--workers", type=worker_count, default=os.cpu_count() or 1, help="worker processes")
    report.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    report.set_defaults(handler=cmd_report)


def cmd_eval(args: argparse.Namespace) -> int:
    """Measure how well metrics rank the known label errors of errors.json first (AP, AUROC, P@K, recall)."""
    if not args.metrics and not args.scores:
        raise UserError("metricsmith eval: give at least one --metric FILE or --scores FILE")
    distinct_score_files(args.scores)
    for path in args.scores:
        if not path.is_dir():  # a directory of Parquet parts (`score --out DIR/`) reads as one file
            readable_format(path)
    specs = load_metrics(args.metrics, args.library)
    errors = load_error_labels(args.errors)
    dataset = load_coco(args.annotations, args.images)
    truth = ground_truth(dataset, errors)
    check_files(truth, errors_name=str(args.errors))
    rows, directions, _ = _gather_scores(args, specs, dataset, truth)
    report = evaluate(truth, scores_from_rows(rows, directions), budget=DEFAULT_BUDGET)
    if args.json:
        stdout.print_json(report.model_dump_json())
    else:
        _print_evaluation(report)
    # On stderr, so that --json stays one document: a failed call's item ranks last in every figure above.
    names = {image.id: image.file_name for image in dataset.images}
    for note in failure_notes(rows, names, over="", consequence="rank as least suspicious in every figure"):
        stderr.print(f"note: {note}", markup=False)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML page: per metric a histogram with outlier fences and the top and bottom items."""
    if not args.metrics and not args.scores:
        raise UserError("metricsmith report: give at least one --scores FILE or --metric FILE")
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{args.out}: the report is HTML; name it with .html")
    check_output_folder(args.out)
    distinct_score_files(args.scores)
    for path in args.scores:
        if not path.is_dir():  # a directory of Parquet parts (`score --out DIR/`) reads as one file
            readable_format(path)
    specs = load_metrics(args.metrics, args.library)
    errors = load_error_labels(args.errors) if args.errors is not None else None
    selftest = load_selftest(args.selftest, args.annotations) if args.selftest is not None else None
    dataset = load_coco(args.annotations, args.images)
    truth = ground_truth(dataset, errors or ())
    if errors is not None:
        check_files(truth, errors_name=str(args.errors))
    rows, directions, known = _gather_scores(args, specs, dataset, truth)
    from agent.evaluation.report import build_report, human_size, render_html, write_report  # jinja2: only here

    triage = load_jsonl(args.triage) if args.triage is not None else ()
    if args.triage is not None and not triage:
        raise UserError(f"--triage {args.triage}: the file is empty; give the triage.jsonl `metricsmith triage` wrote")
    report = build_report(
        dataset, rows, directions, errors=errors, specs=known, top_k=args.top, selftest=selftest, triage=triage
    )
    size = write_report(args.out, render_html(report))
    stderr.print(f"wrote {args.out} ({human_size(size)})", markup=False)
    return EXIT_OK


def _gather_scores(
    args: argparse.Namespace, specs: list[MetricSpec], dataset: Dataset, truth: GroundTruth
) -> tuple[list[ScoreRow], dict[str, Direction], dict[str, MetricSpec]]:
    """The rows of every --scores file and of every --metric scored in the sandbox, each metric's SUSPICIOUS
    direction, and the metric files known by name.

    A score file records each metric's direction, sha256 and origin (see `agent.metrics.results`). A metric
    read from a file and also given with --metric is refused before anything is scored.
    """
    rows: list[ScoreRow] = []
    tables = []
    for path in args.scores:
        read = read_rows(path)
        if not read:  # an empty table would look like a measurement of nothing
            raise UserError(f"--scores {path}: holds no score rows")
        check_files(dataclasses.replace(truth, errors=()), read, scores_name=str(path))
        tables.append(recorded_metrics(read, str(path)))
        rows.extend(read)
    recorded = combine_recorded(*tables)
    for spec in specs:
        if spec.name in recorded:
            raise UserError(scored_twice(spec, recorded[spec.name]))
    directions, known = _directions(recorded, specs, dict(args.direction))
    if specs:
        rows.extend(score_in_sandbox(dataset, specs, args.workers))
    return rows, directions, known


def _directions(
    recorded: dict[str, RecordedMetric], specs: list[MetricSpec], overrides: dict[str, Direction]
) -> tuple[dict[str, Direction], dict[str, MetricSpec]]:
    """Each metric's direction: --direction, else what its score file or metric file says.

    A score file written before directions were recorded falls back on the built-in metric of that
    name, as it always did; a metric left without a direction is refused later, by `scores_from_rows`,
    with a message naming the --direction to pass. The built-in's spec (its title, in the report) is
    used only when the file's rows are that built-in's code, or do not say what code they are.
    """
    # An override that names no metric is most likely a typo, and would silently leave the recorded direction.
    names = [*recorded, *(spec.name for spec in specs)]
    unknown = [name for name in overrides if name not in names]
    if unknown:
        name = unknown[0]
        raise UserError(f"--direction {name}={overrides[name]}: no metric {name} to evaluate ({', '.join(names)})")
    known = {spec.name: spec for spec in specs}
    directions: dict[str, Direction] = {spec.name: spec.suspicious for spec in specs}
    builtins = set(builtin_metric_names())
    for name, record in recorded.items():
        builtin = load_metric_file(f"{BUILTIN_PREFIX}{name}") if name in builtins else None
        if builtin is not None and (
            record.code_sha256 == builtin.code_sha256 or (record.code_sha256 is None and name not in overrides)
        ):
            known[name] = builtin
            directions[name] = record.suspicious or builtin.suspicious
        elif record.suspicious is not None:
            directions[name] = record.suspicious
    return directions | overrides, known


def _print_evaluation(report: EvaluationReport) -> None:
    types = list(report.items.errors_by_type)
    title = f"{report.items.errors} errors in {report.items.annotations} annotations and {report.items.images} images"
    # Error-type AP columns get short headers (spur. = spurious): the table must fit 120 piped columns.
    short = [SHORT_TYPE_NAMES.get(t, t[:5]) for t in types]
    headers = ["metric", "level", "AP", "AUROC", "P@K", f"R@{report.budget:.0%}", *short, "img AP"]
    table = Table(
        *headers,
        title=f"{title}; AP per error type under its name",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in table.columns[1:]:
        column.no_wrap = True
    table.columns[0].no_wrap = True
    for result in report.metrics:
        cells = [result.ap, result.auroc, result.precision_at_k, result.recall_at_5pct]
        cells += [result.ap_by_type.get(t) for t in types] + [result.image_ap]
        style = "dim" if result.metric in ("random", "combined") else None
        table.add_row(
            result.metric,
            "obj" if result.level == "object" else "img",
            *("-" if v is None else f"{v:.3f}" for v in cells),
            style=style,
        )
    stdout.print(table)
