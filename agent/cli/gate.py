"""Commands of the approval gate: `approve` and `reject` (scriptable), registered by agent.cli."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.authoring.candidates import load_candidate, locate_candidate
from agent.cli.console import EXIT_OK, stderr
from agent.metrics.library import check_library_folder, default_library_dir
from agent.review.gate import approve, promote_candidate, reject

__all__ = ["cmd_approve", "cmd_reject", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    approving = commands.add_parser("approve", help=cmd_approve.__doc__, description=cmd_approve.__doc__)
    approving.add_argument("run_dir", type=Path, help="the run directory of `metricsmith author` or `batch`")
    approving.add_argument("candidate", help="candidate id (NAME-xxxxxxxx), as `metricsmith review` lists them")
    approving.add_argument("--note", help="why you approve it: kept in the library manifest")
    approving.add_argument("--by", help="who approves (default: your user name)")
    approving.add_argument(
        "--library", type=Path, help="library folder (default: $METRICSMITH_LIBRARY or ./metricsmith-library)"
    )
    approving.add_argument("--no-promote", action="store_true", help="approve only; promote later")
    approving.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    approving.set_defaults(handler=cmd_approve)

    rejecting = commands.add_parser("reject", help=cmd_reject.__doc__, description=cmd_reject.__doc__)
    rejecting.add_argument("run_dir", type=Path)
    rejecting.add_argument("candidate")
    rejecting.add_argument("--reason", required=True, help="why: kept in the decision log")
    rejecting.add_argument("--by", help="who rejects (default: your user name)")
    rejecting.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    rejecting.set_defaults(handler=cmd_reject)


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a pending candidate's current code (bound to its sha256) and promote it into the library.

    A candidate approved earlier without being promoted (--no-promote) is promoted.
    """
    run_dir = locate_candidate(args.run_dir, args.candidate)
    library = default_library_dir(args.library)
    if not args.no_promote:
        check_library_folder(library)  # before the approval, which a failed promotion would leave behind
    if load_candidate(run_dir, args.candidate).status == "approved" and not args.no_promote:
        record = load_candidate(run_dir, args.candidate)
        assert record.approval is not None
        line = f"{record.id} was approved (code {record.approval.code_sha256[:12]})"
    else:
        record = approve(run_dir, args.candidate, by=args.by, note=args.note)
        assert record.approval is not None
        line = f"approved {record.id} (code {record.approval.code_sha256[:12]})"
    if args.no_promote:
        stderr.print(line)
        return EXIT_OK
    entry = promote_candidate(run_dir, args.candidate, library, by=args.by)
    stderr.print(f"{line}, promoted as lib:{entry.manifest.name}@{entry.manifest.version} in {library}")
    return EXIT_OK


def cmd_reject(args: argparse.Namespace) -> int:
    """Reject a pending candidate, with the reason."""
    record = reject(locate_candidate(args.run_dir, args.candidate), args.candidate, args.reason, by=args.by)
    stderr.print(f"rejected {record.id}: {args.reason}")
    return EXIT_OK
