"""`metricsmith batch` (many ideas, resumable) and `metricsmith review` (the interactive gate)."""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from agent.authoring.candidates import CandidateRecord, author_runs, list_candidates, load_candidate, twins
from agent.cli.console import (
    EXIT_INFRASTRUCTURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    new_run_dir,
    positive_int,
    seconds,
    stderr,
    stdout,
    worker_count,
)
from agent.errors import UserError
from agent.metrics.contract import MetricFileError
from agent.metrics.library import check_library_folder, default_library_dir
from agent.review.editing import edit_candidate
from agent.review.gate import approve, promote_candidate, reject
from agent.review.view import show_candidate
from agent.sessions.batch import BatchOptions, run_batch
from agent.sessions.batch_config import load_batch_config

__all__ = ["cmd_batch", "cmd_review", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    batch = commands.add_parser("batch", help=cmd_batch.__doc__, description=cmd_batch.__doc__)
    batch.add_argument("config", type=Path, help="the batch config (TOML); see examples/demo.toml")
    batch.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    batch.add_argument("--out", type=Path, help="run directory of a new run (default: runs/batch-N)")
    batch.add_argument("--concurrency", type=positive_int, default=2, help="ideas authored at once (default 2)")
    batch.add_argument("--backend", choices=["openai", "local", "replay"], help="overrides [model] backend")
    batch.add_argument("--model", help="overrides [model] model")
    batch.add_argument("--base-url", help="overrides [model] base_url")
    batch.add_argument("--request-timeout", type=seconds, metavar="SECONDS", help="overrides [model] request_timeout")
    batch.add_argument("--library", type=Path, help="overrides library")
    batch.add_argument("--workers", type=worker_count, help="sandbox worker processes per validation")
    batch.add_argument(
        "--approve-passing",
        action="store_true",
        help="approve and promote every candidate that passes validation, recorded as a policy decision",
    )
    batch.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    batch.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    batch.set_defaults(handler=cmd_batch)

    review = commands.add_parser("review", help=cmd_review.__doc__, description=cmd_review.__doc__)
    review.add_argument("run_dir", type=Path, help="a run directory of `author` or `batch`")
    review.add_argument("--library", type=Path, help="library folder for approved metrics")
    review.add_argument("--open", action="store_true", help="open each candidate's contact sheet in a browser")
    review.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    review.set_defaults(handler=cmd_review)


def _batch_progress(event: str, data: dict[str, Any]) -> None:
    if event == "start":
        stderr.print(f"{data['ideas']} ideas: {data['done']} done earlier, {data['todo']} to author")
    elif event == "idea":
        verdict = {"passed": "[green]passed[/]", "gave_up": "[red]gave up[/]"}.get(
            data["verdict"], escape(data["verdict"])
        )
        said = f"({data['exchanges']} exchanges) {data['reason'][:150]}"
        stderr.print(f"  {escape(data['idea_id'])}: {verdict} {escape(said)}", markup=True)
        if data.get("usefulness"):
            stderr.print(f"    usefulness on injected errors: {data['usefulness']}", markup=False)
    elif event == "note":
        stderr.print(f"note: {data['text']}", markup=False)
    elif event == "unreachable":
        stderr.print(
            f"  the model server was unreachable for {data['in_a_row']} ideas in a row: no new ideas "
            "(--resume authors them, and these, once it answers)"
        )
    elif event == "ceiling":
        stderr.print(f"  cost ceiling reached (${data['spent']:.2f} > ${data['ceiling']:.2f}): no new ideas")


def cmd_batch(args: argparse.Namespace) -> int:
    """Author every idea of a config file (or N brainstormed ones), concurrently; resumable after any crash.

    Exit codes: 0 done (candidates may wait for review), 1 some ideas failed, 2 usage or config error,
    3 the model was unreachable.
    """
    overrides = {
        ("model", "backend"): args.backend,
        ("model", "model"): args.model,
        ("model", "base_url"): args.base_url,
        ("model", "request_timeout"): args.request_timeout,
        ("library",): str(args.library.resolve()) if args.library else None,
    }
    config = load_batch_config(args.config, overrides=overrides)
    if args.resume is not None and args.out is not None:  # one of the two would be ignored
        raise UserError("give --resume RUN_DIR (to finish a run) or --out RUN_DIR (for a new one), not both")
    run_dir = args.resume or args.out or new_run_dir("batch")
    stderr.print(f"batch run in {run_dir} with the {config.model.backend} backend")
    try:
        summary = run_batch(
            config,
            run_dir,
            resume=args.resume is not None,
            options=BatchOptions(
                concurrency=args.concurrency, approve_passing=args.approve_passing, workers=args.workers
            ),
            progress=_batch_progress,
        )
    except KeyboardInterrupt:
        # The ideas under way wait on model requests in threads that Python would join at exit, up to their
        # whole timeout: leave now. Each finished idea is in results.jsonl (fsync'ed) and each exchange in its
        # transcript; `--resume` authors the unfinished ones again.
        stderr.print(f"interrupted: the finished ideas are kept; metricsmith batch CONFIG --resume {run_dir} goes on")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    if args.json:
        stdout.print_json(summary.model_dump_json())
    else:
        stderr.print(
            f"{summary.finished}/{summary.ideas} ideas: {summary.passed} passed, {summary.gave_up} gave up, "
            f"{summary.unreachable} unreachable; {summary.tokens} tokens"
            + (f", about ${summary.cost_usd:.4f}" if summary.cost_usd is not None else "")
        )
        if summary.report:
            stderr.print(f"report: {summary.report}")
    if summary.pending_review:
        stderr.print(f"{len(summary.pending_review)} candidates wait for you: metricsmith review {run_dir}")
    elif not summary.approved and not summary.unreachable:  # an outage says nothing of the model's skill
        advice = (
            "A capable model does better: a larger one in [model] model"
            if config.model.backend == "openai"
            else 'A capable model does better: set [model] backend = "openai" in the config'
        )
        stderr.print(
            f"no candidate passed validation; each attempt and transcript is in {run_dir}/ideas/. {advice}.",
            markup=False,
        )
    if summary.unreachable:
        stderr.print(
            f"the model server was unreachable for {summary.unreachable} ideas; once it answers, "
            f"metricsmith batch CONFIG --resume {run_dir} authors them again",
            markup=False,
        )
        return EXIT_INFRASTRUCTURE
    return EXIT_SOME_FAILED if summary.gave_up else EXIT_OK


# -- review -------------------------------------------------------------------------------------


# The keys of the review prompt, in the order the prompt and the hint name them; each name starts
# with its key, which is what the prompt's brackets show. Enter alone skips.
_CHOICES = {"a": "approve", "r": "reject", "e": "edit", "s": "skip", "q": "quit"}
_PROMPT = ", ".join(f"[{key}]{name[1:]}" for key, name in _CHOICES.items()) + "? "
_KEYS_HINT = ", ".join(f"{key} ({name})" for key, name in _CHOICES.items())


@dataclass
class ReviewTally:
    """What one `metricsmith review` session decided, summed up however the session ends."""

    total: int
    approved: list[str] = field(default_factory=list)  # lib:NAME@VERSION, or the candidate id if not promoted
    rejected: list[str] = field(default_factory=list)  # candidate ids
    left_pending: int = 0  # skipped, or edited into code that failed validation

    @property
    def still_pending(self) -> int:
        return self.total - len(self.approved) - len(self.rejected)

    def summary(self, finished: bool) -> str:
        not_reviewed = self.still_pending - self.left_pending
        parts = [_counted(self.approved, "approved"), _counted(self.rejected, "rejected")]
        parts.append(f"{self.left_pending} left pending")
        if not_reviewed:
            parts.append(f"{not_reviewed} not reviewed")
        return f"review {'finished' if finished else 'stopped'}: {', '.join(parts)}"


def _counted(names: list[str], verb: str) -> str:
    return f"{len(names)} {verb}" + (f" ({', '.join(names)})" if names else "")


def cmd_review(args: argparse.Namespace) -> int:
    """Go through the pending candidates of a run: approve, reject with a reason, edit, or skip each.

    q stops early and leaves the rest pending. Review ends with what it decided, however it ends.
    """
    listed = [(run, record) for run in author_runs(args.run_dir) for record in list_candidates(run)]
    pending = [(run, record) for run, record in listed if record.status == "pending"]
    if not pending:
        stderr.print(f"no pending candidate in {args.run_dir}")
        return EXIT_OK
    library = default_library_dir(args.library)
    everything = [record for _, record in listed]
    tally = ReviewTally(total=len(pending))
    finished = False
    # The summary is printed however review ends (the last candidate, q, end of input, an error,
    # Ctrl-C), because every decision taken so far is already on disk and the reviewer should know which.
    try:
        for run, record in pending:
            if not _review_candidate(run, record, everything, library, args.open, tally):
                break
        else:
            finished = True
    finally:
        stderr.print(tally.summary(finished), markup=False)
        if tally.still_pending:
            stderr.print(f"the pending candidates wait for the next `metricsmith review {args.run_dir}`", markup=False)
    return EXIT_OK


def _review_candidate(
    run: Path,
    record: CandidateRecord,
    everything: list[CandidateRecord],
    library: Path,
    open_sheet: bool,
    tally: ReviewTally,
) -> bool:
    """Show one candidate and ask until it is decided or skipped; False when the reviewer quits."""
    _show(run, record, everything, open_sheet)
    while True:
        typed = _ask(_PROMPT).strip().lower()
        choice = _choice(typed)
        if choice is None:
            stderr.print(f"unknown choice {typed!r}: press {_KEYS_HINT}", markup=False)
        elif choice == "approve":
            if not record.validation_passed:
                # The gate would refuse it; saying so here keeps the reviewer on this candidate.
                stderr.print("this code did not pass validation, so it cannot be approved: edit, reject or skip it")
                continue
            note = _ask("note (optional): ").strip() or None
            check_library_folder(library)  # before the approval, which a failed promotion would leave behind
            approve(run, record.id, note=note)
            tally.approved.append(record.id)  # should promotion fail, the summary still names the approval
            entry = promote_candidate(run, record.id, library)
            tally.approved[-1] = f"lib:{entry.manifest.name}@{entry.manifest.version}"
            stderr.print(f"promoted as {tally.approved[-1]} in {library}")
            return True
        elif choice == "reject":
            reason = _ask("reason: ").strip()
            if not reason:
                stderr.print("a rejection needs a reason")
                continue
            reject(run, record.id, reason)
            tally.rejected.append(record.id)
            return True
        elif choice == "edit":
            try:
                record = _edit(run, record)
            except MetricFileError as error:  # the edit is recorded, not validated: edit again, reject or skip
                stderr.print(
                    f"{error}; it stays pending, not validated: edit it again, reject or skip it", markup=False
                )
                record = load_candidate(run, record.id)
                continue
            if record.validation_passed:
                _show(run, record, everything, open_sheet)  # the new code, for a decision on it
                continue
            stderr.print("the edited code did not pass validation; it stays pending")
            tally.left_pending += 1
            return True
        elif choice == "skip":
            tally.left_pending += 1
            return True
        else:  # quit
            return False


def _choice(typed: str) -> str | None:
    """The choice a typed answer names, None if it names none; Enter alone skips."""
    if not typed:
        return "skip"
    # A letter or the whole word, nothing looser: at an approval gate, "as" must not count as "a".
    if typed in _CHOICES:
        return _CHOICES[typed]
    return typed if typed in _CHOICES.values() else None


def _show(run: Path, record: CandidateRecord, everything: list[CandidateRecord], open_sheet: bool) -> None:
    show_candidate(stdout, run, record)
    for other in twins(record, everything):
        stdout.print(f"the same code was also written for another idea ({other.status}): {other.idea}")
    sheet = run / "candidates" / record.id / "report.html"
    if sheet.exists():
        stdout.print(f"worst and best items, with their boxes: {sheet}")
        if open_sheet:
            webbrowser.open(sheet.resolve().as_uri())


def _ask(prompt: str) -> str:
    stderr.print(prompt, end="", markup=False)
    line = sys.stdin.readline()
    if not line:
        raise UserError("no answer on standard input; review stopped (nothing was decided for this candidate)")
    return line


def _edit(run: Path, record: CandidateRecord) -> CandidateRecord:
    """Open metric.py in $EDITOR; changed code goes back to pending and is validated again."""
    return edit_candidate(run, record)
