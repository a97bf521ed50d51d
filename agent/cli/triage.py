"""`metricsmith triage`: one ranked queue of suspicious boxes and images, and exports for review tools."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich import box
from rich.table import Table

from agent.cli.console import EXIT_OK, positive_int, print_warnings, seed_count, stderr, stdout, worker_count
from agent.cli.metric_options import ProgressBar, add_library_option, load_metrics
from agent.data.coco import coco_from_document, read_coco_json
from agent.errors import UserError
from agent.evaluation.exports.writer import (
    ExportOptions,
    check_out_folder,
    parse_exports,
    remove_stale_exports,
    write_all,
)
from agent.evaluation.ranking import check_files, ground_truth, load_error_labels
from agent.evaluation.triage import TriageResult, run_triage, scores_of_rows, triage_from_scores
from agent.metrics.library import library_metrics
from agent.metrics.results import (
    combine_recorded,
    distinct_score_files,
    read_rows,
    recorded_metrics,
    scored_twice,
)
from agent.metrics.scoring import require_an_image
from sandbox.isolation import SandboxConfig

__all__ = ["cmd_triage", "register"]

LEARN = {"injected": "injected", "known-errors": "known_errors", "rank-average": "rank_average"}


def _shares(text: str) -> dict[str, float]:
    wanted = f"three shares that add up to 1, like 0.8,0.1,0.1; got {text!r}"
    try:
        parts = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(wanted) from None
    if len(parts) != 3 or any(not 0 <= p <= 1 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(wanted)
    return dict(zip(("train", "val", "test"), parts, strict=True))


def register(commands: argparse._SubParsersAction) -> None:
    triage = commands.add_parser("triage", help=cmd_triage.__doc__, description=cmd_triage.__doc__)
    triage.add_argument("--annotations", required=True, type=Path, help="COCO JSON file (never written)")
    triage.add_argument("--images", type=Path, help="image folder (default: the JSON's folder or its images/)")
    triage.add_argument(
        "--metric", action="append", dest="metrics", default=[],
        help="metric file, builtin:NAME or lib:NAME (repeatable; default: the hand-written built-ins and the library)",
    )  # fmt: skip
    triage.add_argument(
        "--scores", action="append", default=[], type=Path, help="score file (needs --errors or --learn rank-average)"
    )
    triage.add_argument(
        "--errors", type=Path, help="errors.json of known errors: learn from them, and measure the queue"
    )
    triage.add_argument(
        "--learn", choices=list(LEARN),
        help="how to combine the metrics (default: known-errors with --errors, else injected)",
    )  # fmt: skip
    triage.add_argument("--seeds", type=seed_count, default=2, help="injected copies to learn on (default 2)")
    triage.add_argument("--rate", type=float, default=0.2, help="share of boxes given an error per copy (default 0.2)")
    triage.add_argument("--out", required=True, type=Path, help="new folder for triage.jsonl and the exports")
    triage.add_argument("--export", default="", help="comma-separated: label-studio, cvat, coco, splits")
    triage.add_argument("--top", type=positive_int, default=15, help="rows of the terminal table (default 15)")
    triage.add_argument("--budget", type=float, default=0.05, help="review budget, a share of the boxes (default 0.05)")
    triage.add_argument(
        "--flag-share", type=float, default=0.05, help="cvat: the top share of images sent (default 0.05)"
    )
    triage.add_argument("--drop-top", type=positive_int, help="coco: drop the K most suspicious boxes")
    triage.add_argument("--drop-share", type=float, help="coco: drop the most suspicious share P of the boxes")
    triage.add_argument("--drop-images", action="store_true", help="coco: drop the whole images of those boxes")
    triage.add_argument(
        "--split-metric", action="append", dest="split_metrics",
        help="splits: balance along this metric's quantile bins (repeatable; default: triage, the suspicion)",
    )  # fmt: skip
    triage.add_argument("--split-shares", type=_shares, default="0.8,0.1,0.1", help="splits: train,val,test shares")
    triage.add_argument("--image-url", help="label-studio: prefix of each image's URL (default /data/local-files/?d=)")
    triage.add_argument("--workers", type=worker_count, default=os.cpu_count() or 1, help="worker processes")
    add_library_option(triage)
    triage.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    triage.set_defaults(handler=cmd_triage)


def cmd_triage(args: argparse.Namespace) -> int:
    """Rank every box and image by how likely its label is wrong, with reasons, and export the queue for review.

    Without ground truth the metrics' combination is learned on errors injected into copies of your
    own data, and applied to your boxes cross-fitted by image. With --errors it is learned from the
    known errors instead, and the queue is measured on them. Writes OUT/triage.jsonl (schema in
    agent/evaluation/triage.py), OUT/summary.json, and one folder per --export.
    """
    learn = LEARN[args.learn] if args.learn else ("known_errors" if args.errors else "injected")
    if learn == "known_errors" and not args.errors:
        raise UserError("--learn known-errors needs --errors FILE")
    if args.scores and learn == "injected":
        raise UserError("score files can't be scored on injected copies: pass --errors FILE or --learn rank-average")
    if not 0 < args.rate < 1:
        raise UserError(f"--rate must be above 0 and below 1, got {args.rate}")
    for flag, value in (("--budget", args.budget), ("--flag-share", args.flag_share)):
        if not 0 < value <= 1:
            raise UserError(f"{flag} must be above 0 and at most 1, got {value}")
    options = ExportOptions(
        exports=parse_exports(args.export), flag_share=args.flag_share, drop_top=args.drop_top,
        drop_share=args.drop_share, drop_images=args.drop_images, split_metrics=args.split_metrics or ["triage"],
        split_shares=args.split_shares if isinstance(args.split_shares, dict) else _shares(args.split_shares),
        **({"image_url": args.image_url} if args.image_url else {}),
    )  # fmt: skip
    if "coco" in options.exports and (args.drop_top is None) == (args.drop_share is None):
        raise UserError("--export coco needs exactly one of --drop-top K and --drop-share P")
    given = [flag for flag, value in (("--drop-top", args.drop_top), ("--drop-share", args.drop_share),
                                      ("--drop-images", args.drop_images or None)) if value is not None]  # fmt: skip
    if given and "coco" not in options.exports:  # silently ignored, it would look like boxes were dropped
        raise UserError(f"{given[0]} goes with --export coco (the cleaned copy), which is not asked for")
    check_out_folder(args.out, [p for p in (args.annotations, args.errors, *args.scores) if p is not None])
    document = read_coco_json(args.annotations)
    dataset = coco_from_document(document, args.annotations, args.images)
    truth = ground_truth(dataset, load_error_labels(args.errors) if args.errors else ())
    check_files(truth, errors_name=str(args.errors))
    known = list(truth.errors) if args.errors else None
    distinct_score_files(args.scores)
    rows, tables = [], []
    for path in args.scores:
        read = read_rows(path)
        check_files(ground_truth(dataset), read, scores_name=str(path))
        tables.append(recorded_metrics(read, str(path)))
        rows.extend(read)
    recorded_by_name = combine_recorded(*tables)
    if args.metrics:
        specs = load_metrics(args.metrics, args.library)
        for spec in specs:  # its rows would be mixed with the file's
            if spec.name in recorded_by_name:
                raise UserError(scored_twice(spec, recorded_by_name[spec.name]))
    elif args.scores:
        specs = []
    else:
        _, every = library_metrics(args.library)
        # The learned built-ins train a classifier per scored version: K+1 times their cost, on top of triage's own.
        specs = [spec for spec in every if spec.combine != "learned" or spec.origin != "builtin"]
    recorded = scores_of_rows(rows, {}) if rows else []
    if specs:
        require_an_image(dataset)  # before the copies are made, not after: minutes on a large dataset
    print_warnings(args.annotations, dataset.warnings)  # once the input is known good: a refusal stays one line
    with ProgressBar() as (progress, _):
        result = run_triage(
            document, dataset, specs, sandbox=SandboxConfig(workers=args.workers),
            seeds=list(range(args.seeds)) if learn == "injected" else [], rate=args.rate, known_errors=known,
            learn=learn, budget=args.budget, extra=recorded,  # type: ignore[arg-type]
            on_calls=lambda count: progress.advance(progress.task_ids[0], count),
        ) if specs else triage_from_scores(dataset, recorded, (), known if learn == "known_errors" else None,
                                           budget=args.budget)  # fmt: skip
        progress.stop()
    removed = remove_stale_exports(args.out, options.exports)
    written = write_all(args.out, dataset, document, result, result.metrics, options)
    _print(result, args.top)
    for path in removed:
        stderr.print(f"removed {path}/: the earlier run's export, which this run does not write", markup=False)
    for path in written:
        stderr.print(f"wrote {path}", markup=False)
    return EXIT_OK


def _print(result: TriageResult, top: int) -> None:
    named = {"injected": "learned on injected errors", "known_errors": "learned on the known errors",
             "rank_average": "rank_average (the fallback: nothing learned)"}  # fmt: skip
    table = Table("rank", "image", "box", "class", "suspicion", "likely", "reasons", box=box.SIMPLE_HEAD,
                  title=f"triage: {len(result.boxes)} boxes, {named[result.method]}; the top {top}")  # fmt: skip
    for item in result.boxes[:top]:
        reasons = "; ".join(reason.text for reason in item.reasons)
        cells = [str(item.rank), item.file_name, str(item.annotation_id), item.category or "", f"{item.suspicion:.3f}"]
        table.add_row(*cells, item.likely_error or "-", reasons)
    stdout.print(table)
    if result.figures:
        figures = result.figures
        stdout.print(
            f"on the known errors: precision {_fixed(figures.precision_at_budget)} in the top {figures.reviewed} "
            f"boxes (the {figures.budget:.0%} budget; random {_fixed(figures.random_precision)}), "
            f"recall {_fixed(figures.recall_at_5pct)} at 5%", markup=False,
        )  # fmt: skip
    for note in result.notes:
        stderr.print(f"note: {note}", markup=False)


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
