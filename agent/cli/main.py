"""The `metricsmith` command line: parse, call one function of the agent layer, render.

Errors become one line on stderr and an exit code here, and only here. `--debug` shows the
traceback as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.syntax import Syntax
from rich.table import Table

from agent import cli_author, cli_batch, cli_chat, cli_gate
from agent.console import (
    EXIT_INFRASTRUCTURE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    ArgumentParser,
    positive_float,
    positive_int,
    stderr,
    stdout,
)
from agent.dataset import Dataset, DatasetInvalid, load_coco
from agent.demo_data import generate_demo_dataset
from agent.doctor import DoctorReport, run_doctor
from agent.errors import MetricsmithError, UserError
from agent.evaluation import (
    DEFAULT_BUDGET,
    Direction,
    EvaluationReport,
    GroundTruth,
    check_files,
    evaluate,
    ground_truth,
    load_error_labels,
    scores_from_rows,
)
from agent.library import (
    default_library_dir,
    library_versions,
    list_library,
    remove_metric,
    resolve_metric,
)
from agent.metric_file import (
    BUILTIN_PREFIX,
    MetricSpec,
    builtin_metric_names,
    list_builtin_metrics,
    load_metric_file,
)
from agent.model import ModelUnreachable
from agent.report import build_report, human_size, render_html, write_report
from agent.results_io import (
    Journal,
    RecordedMetric,
    combine_recorded,
    output_format,
    read_rows,
    recorded_metrics,
    write_rows,
)
from agent.scoring import ScoreOutcome, ScoreRow, failure_lines, score_dataset
from sandbox.engine import WorkerStartFailed
from sandbox.isolation import IsolationUnavailable, SandboxConfig

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


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="metricsmith", description="Write, run and measure data-quality metrics for CV datasets."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    score = commands.add_parser("score", help=cmd_score.__doc__, description=cmd_score.__doc__)
    score.add_argument("--annotations", required=True, type=Path, help="COCO JSON file")
    score.add_argument("--images", type=Path, help="image folder (default: the JSON's folder or its images/)")
    score.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="metric file or builtin:NAME (repeatable; default: every built-in metric)",
    )
    score.add_argument("--out", required=True, type=Path, help="results file: .csv, .jsonl or .parquet")
    score.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="worker processes")
    score.add_argument("--timeout", type=positive_float, default=10.0, help="seconds per score() call")
    score.add_argument("--memory", type=positive_int, default=2048, help="MB each worker may allocate")
    score.add_argument(
        "--require-isolation", action="store_true", help="refuse to run unless Landlock, seccomp and bwrap all hold"
    )
    score.add_argument(
        "--separate-workers",
        action="store_true",
        help="give each metric workers of its own, so an untrusted metric can't alter the others' scores "
        "(slower: each image is decoded once per metric)",
    )
    _add_library_option(score)
    score.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    score.set_defaults(handler=cmd_score)

    doctor = commands.add_parser("doctor", help=cmd_doctor.__doc__, description=cmd_doctor.__doc__)
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    doctor.set_defaults(handler=cmd_doctor)

    demo = commands.add_parser("demo-data", help=cmd_demo_data.__doc__, description=cmd_demo_data.__doc__)
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--images", type=positive_int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--error-rate",
        type=float,
        default=0.2,
        help="share of labels given a known error (default 0.2; see errors.json)",
    )
    demo.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(handler=cmd_demo_data)

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
        help="results file of `metricsmith score` (.csv, .jsonl, .parquet) to evaluate as is (repeatable)",
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
    evaluation.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="worker processes")
    _add_library_option(evaluation)
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
        help="results file of `metricsmith score` (.csv, .jsonl, .parquet) (repeatable)",
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
    _add_library_option(report)
    report.add_argument(
        "--direction",
        action="append",
        default=[],
        type=_direction,
        metavar="NAME=high|low",
        help="use this SUSPICIOUS direction for metric NAME instead of the one recorded (as for eval)",
    )
    report.add_argument("--top", type=positive_int, default=8, help="items shown at each end per metric (default 8)")
    report.add_argument("--out", required=True, type=Path, help="the HTML file to write")
    report.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="worker processes")
    report.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    report.set_defaults(handler=cmd_report)

    library = commands.add_parser("library", help=cmd_library.__doc__, description=cmd_library.__doc__)
    library.add_argument("action", choices=["list", "show", "remove"])
    library.add_argument("name", nargs="?", help="the metric to show or remove")
    library.add_argument("--json", action="store_true")
    _add_library_option(library)
    library.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    library.set_defaults(handler=cmd_library)

    cli_gate.register(commands)
    cli_author.register(commands)
    cli_batch.register(commands)
    cli_chat.register(commands)
    return parser


# -- commands -----------------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    """Run metric files over a COCO dataset in the sandbox and write one row per (metric, item)."""
    output_format(args.out)
    specs = _load_metrics(args.metrics, args.library) if args.metrics else list_builtin_metrics()
    if not specs:
        raise UserError("no metrics given and no built-in metrics installed; pass --metric FILE")
    dataset = load_coco(args.annotations, args.images)
    for warning in dataset.warnings[:10]:
        stderr.print(f"[yellow]warning[/]: {args.annotations}: {warning}")
    if len(dataset.warnings) > 10:
        stderr.print(f"[yellow]warning[/]: ... and {len(dataset.warnings) - 10} more warnings")
    config = SandboxConfig(
        workers=args.workers,
        timeout_s=args.timeout,
        memory_mb=args.memory,
        require_isolation=args.require_isolation,
        share_workers=not args.separate_workers,
    )
    journal = Journal(args.out)
    with _ProgressBar() as (progress, advance):
        outcome = score_dataset(dataset, specs, config, on_rows=lambda rows: (journal.append(rows), advance(rows)))
        progress.stop()
    write_rows(args.out, outcome.rows)
    journal.discard()
    _print_summary(outcome, args.out)
    if outcome.interrupted:
        stderr.print(f"interrupted: wrote the {len(outcome.rows)} of {outcome.expected_rows} rows scored to {args.out}")
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if outcome.failed else EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """Report which sandbox layers are active on this machine and what is left unprotected."""
    report = run_doctor()
    if args.json:
        stdout.print_json(report.model_dump_json())
    else:
        _print_doctor(report)
    return EXIT_OK if report.worker_ok else EXIT_USAGE


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Generate a small procedural COCO dataset (pandas, bears, foxes) to try metricsmith on."""
    path = generate_demo_dataset(args.out_dir, n_images=args.images, seed=args.seed, error_rate=args.error_rate)
    stderr.print(f"wrote {args.images} images and {path}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Measure how well metrics rank the known label errors of errors.json first (AP, AUROC, P@K, recall)."""
    if not args.metrics and not args.scores:
        raise UserError("metricsmith eval: give at least one --metric FILE or --scores FILE")
    for path in args.scores:
        output_format(path)
    specs = _load_metrics(args.metrics, args.library)
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
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML page: per metric a histogram with outlier fences and the top and bottom items."""
    if not args.metrics and not args.scores:
        raise UserError("metricsmith report: give at least one --scores FILE or --metric FILE")
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{args.out}: the report is HTML; name it with .html")
    for path in args.scores:
        output_format(path)
    specs = _load_metrics(args.metrics, args.library)
    errors = load_error_labels(args.errors) if args.errors is not None else None
    dataset = load_coco(args.annotations, args.images)
    truth = ground_truth(dataset, errors or ())
    if errors is not None:
        check_files(truth, errors_name=str(args.errors))
    rows, directions, known = _gather_scores(args, specs, dataset, truth)
    report = build_report(dataset, rows, directions, errors=errors, specs=known, top_k=args.top)
    size = write_report(args.out, render_html(report))
    stderr.print(f"wrote {args.out} ({human_size(size)})", markup=False)
    return EXIT_OK


def cmd_library(args: argparse.Namespace) -> int:
    """The metrics you can use: built-ins (--metric builtin:NAME) and promoted ones (--metric lib:NAME[@VERSION]).

    list: every built-in and the latest version of every promoted metric; show NAME: every version of a
    promoted metric with its approval, and the latest code; remove NAME: delete every version of it.
    """
    library = default_library_dir(args.library)
    if args.action != "list" and not args.name:
        raise UserError(f"metricsmith library {args.action}: name the metric (metricsmith library {args.action} NAME)")
    if args.action == "remove":
        count = remove_metric(library, args.name)
        stderr.print(f"removed {args.name} ({count} version{'s' if count != 1 else ''}) from {library}")
        return EXIT_OK
    if args.action == "show":
        entries = library_versions(library, args.name)
        if not entries and args.name in builtin_metric_names():
            spec = load_metric_file(f"{BUILTIN_PREFIX}{args.name}")
            if args.json:
                stdout.print_json(json.dumps([_spec_summary(spec) | {"source": "builtin", "code": spec.source}]))
            else:
                stdout.print(f"{spec.name}: built-in, use as --metric builtin:{spec.name}")
                stdout.print(Syntax(spec.source, "python", line_numbers=True))
            return EXIT_OK
        if not entries:
            raise UserError(f"no metric named {args.name} in the library {library} nor among the built-ins")
        if args.json:
            stdout.print_json(json.dumps([entry.manifest.model_dump(mode="json") for entry in entries]))
            return EXIT_OK
        table = Table("version", "sha256", "promoted", "approver", "note")
        for entry in entries:
            manifest = entry.manifest
            approval = manifest.approval
            approver = approval.approver + (f" (policy: {approval.policy})" if approval.policy else "")
            table.add_row(
                f"v{manifest.version}", manifest.code_sha256[:12], manifest.promoted_at, approver, approval.note or ""
            )
        stdout.print(table)
        stdout.print(Syntax(entries[-1].path.read_text(encoding="utf-8"), "python", line_numbers=True))
        return EXIT_OK
    builtins = list_builtin_metrics()
    promoted = list_library(library)
    if args.json:
        rows = [_spec_summary(spec) | {"source": "builtin"} for spec in builtins]
        rows += [
            {
                "name": entry.manifest.name,
                "level": entry.manifest.level,
                "suspicious": entry.manifest.suspicious,
                "description": entry.manifest.description,
                "source": "library",
                "version": entry.manifest.version,
            }
            for entry in promoted
        ]
        stdout.print_json(json.dumps(rows))
        return EXIT_OK
    table = Table("name", "source", "level", "suspicious", "description")
    for spec in builtins:
        table.add_row(spec.name, "builtin", spec.level, spec.suspicious, spec.description.strip().splitlines()[0])
    for entry in promoted:
        manifest = entry.manifest
        table.add_row(
            manifest.name,
            f"lib v{manifest.version}",
            manifest.level,
            manifest.suspicious,
            manifest.description.strip().splitlines()[0],
        )
    stdout.print(table)
    return EXIT_OK


# -- rendering ----------------------------------------------------------------------------------


def _add_library_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--library",
        type=Path,
        help="metric library folder for lib:NAME (default: $METRICSMITH_LIBRARY or ./metricsmith-library)",
    )


def _load_metrics(refs: list[str], library: Path | None = None) -> list[MetricSpec]:
    specs = [resolve_metric(ref, library) for ref in refs]
    seen: dict[str, str] = {}
    for ref, spec in zip(refs, specs, strict=True):
        if spec.name in seen:
            raise UserError(f"{ref}: metric name {spec.name!r} is already used by {seen[spec.name]}")
        seen[spec.name] = ref
    return specs


def _gather_scores(
    args: argparse.Namespace, specs: list[MetricSpec], dataset: Dataset, truth: GroundTruth
) -> tuple[list[ScoreRow], dict[str, Direction], dict[str, MetricSpec]]:
    """The rows of every --scores file and of every --metric scored in the sandbox, each metric's SUSPICIOUS
    direction, and the metric files known by name.

    A score file records each metric's direction, sha256 and origin (see `agent.results_io`). A metric
    read from a file and also given with --metric is refused before anything is scored.
    """
    rows: list[ScoreRow] = []
    tables = []
    for path in args.scores:
        read = read_rows(path)
        check_files(dataclasses.replace(truth, errors=()), read, scores_name=str(path))
        tables.append(recorded_metrics(read, str(path)))
        rows.extend(read)
    recorded = combine_recorded(*tables)
    for spec in specs:
        if spec.name in recorded:
            raise UserError(_scored_twice(spec, recorded[spec.name]))
    directions, known = _directions(recorded, specs, dict(args.direction))
    if specs:
        rows.extend(_score_in_sandbox(dataset, specs, args.workers))
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


def _scored_twice(spec: MetricSpec, record: RecordedMetric) -> str:
    """Why a metric may not be both read from a score file and scored with --metric: its rows would mix."""
    if record.code_sha256 is None:
        return f"metric {spec.name} is both scored with --metric {spec.path} and read from --scores {record.where}"
    if record.code_sha256 == spec.code_sha256:
        return (
            f"metric {spec.name} is read from {record.where} and would be scored again with --metric {spec.path} "
            f"(the same code, sha256 {spec.code_sha256[:12]}); drop one of the two"
        )
    return (
        f"metric {spec.name}: {record.where} holds scores of other code ({record.code()}) "
        f"than --metric {spec.path} (sha256 {spec.code_sha256[:12]}); evaluate them separately"
    )


def _score_in_sandbox(dataset: Dataset, specs: list[MetricSpec], workers: int) -> list[ScoreRow]:
    """Score the metric files with a progress bar; Ctrl-C raises KeyboardInterrupt (exit 130) once workers stop."""
    with _ProgressBar() as (progress, advance):
        outcome = score_dataset(dataset, specs, SandboxConfig(workers=workers), on_rows=advance)
        progress.stop()
    for name, error in outcome.metric_errors.items():
        stderr.print(f"[red]metric {name} failed to load[/]:\n{error}")
    if outcome.interrupted:
        raise KeyboardInterrupt
    return outcome.rows


class _ProgressBar:
    """A progress bar on a terminal; nothing when stderr is not one."""

    def __enter__(self) -> tuple[Progress, Callable[[list[ScoreRow]], None]]:
        self.progress = Progress(
            TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=stderr,
            disable=not stderr.is_terminal, transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task("scoring", total=None)
        self.progress.start()
        return self.progress, lambda rows: self.progress.advance(self.task, len(rows))

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _print_summary(outcome: ScoreOutcome, out: Path) -> None:
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
    for name, error in outcome.metric_errors.items():
        stderr.print(f"[red]metric {name} failed to load[/]:\n{error}")
    active = [layer.name for layer in outcome.layers if layer.active]
    inactive = [layer.name for layer in outcome.layers if not layer.active]
    line = f"sandbox: {', '.join(active) or 'no kernel layers'} active"
    if inactive:
        line += f"; not active: {', '.join(inactive)} (see `metricsmith doctor`)"
    stderr.print(line)


_SHORT_TYPES = {"spurious": "spur.", "duplicate": "dupl."}


def _print_evaluation(report: EvaluationReport) -> None:
    types = list(report.items.errors_by_type)
    title = f"{report.items.errors} errors in {report.items.annotations} annotations and {report.items.images} images"
    # Error-type AP columns get short headers (spur. = spurious): the table must fit 120 piped columns.
    short = [_SHORT_TYPES.get(t, t[:5]) for t in types]
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


def _print_doctor(report: DoctorReport) -> None:
    table = Table("layer", "state", "what it does here", title="metricsmith sandbox layers")
    for item in report.always_on:
        table.add_row("always", "[green]active[/]", item)
    for layer in report.layers:
        state = "[green]active[/]" if layer.active else "[red]missing[/]"
        table.add_row(layer.name, state, layer.detail)
    stdout.print(table)
    for line in report.missing_protections:
        stdout.print(f"[red]missing protection[/]: {line}")
    for line in report.models:
        stdout.print(f"model backend: {line}", markup=False)
    for note in report.notes:
        stdout.print(f"[yellow]note[/]: {note}")
    if report.worker_error:
        stdout.print(f"[red]error[/]: {report.worker_error}")
    verdict = "fully isolated" if report.fully_isolated else "partly isolated: see above"
    stdout.print(f"verdict: {verdict}")


def _spec_summary(spec: MetricSpec) -> dict:
    return {"name": spec.name, "level": spec.level, "suspicious": spec.suspicious, "description": spec.description}


# -- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return int(args.handler(args))
    except DatasetInvalid as error:
        stderr.print(f"error: {error}", markup=False)
        for line in error.details()[1:]:
            stderr.print(f"  {line}", markup=False)
        return EXIT_USAGE
    except ModelUnreachable as error:  # the environment's problem, not the user's input: its own exit code
        if debug:
            traceback.print_exc()
        stderr.print(f"error: {error}", markup=False)
        return EXIT_INFRASTRUCTURE
    except (MetricsmithError, IsolationUnavailable, WorkerStartFailed) as error:
        if debug:
            traceback.print_exc()
        stderr.print(f"error: {error}", markup=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return EXIT_INTERRUPTED
    except OSError as error:  # a file we were told to read or write: the user's to fix
        if debug:
            traceback.print_exc()
        where = f"{error.filename}: " if error.filename else ""
        stderr.print(f"error: {where}{error.strerror or error}", markup=False)
        return EXIT_USAGE
    except Exception as error:  # a bug in metricsmith: say so in one line, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        stderr.print(
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback, and report it)",
            markup=False,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
