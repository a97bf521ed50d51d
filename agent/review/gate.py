"""The human approval gate: nothing reaches the library without a decision bound to the code's hash.

States of a candidate (agent.authoring.candidates.CandidateRecord.status):

    pending --approve--> approved --promote--> promoted
    pending --reject (reason)--> rejected
    any --edit--> pending   (new code: the old approval no longer applies, validation must run again)

Every decision names the sha256 of the code it was made on. Before acting, the gate hashes
metric.py again: if the file changed since validation (an edit by hand, or by the model), the
candidate drops back to `pending` and the decision is refused. Promotion checks the same binding
once more, so the code in the library is byte for byte the code a human approved.

The only approval without a human at the moment of the decision is a batch policy
(`--approve-passing`): it must be asked for explicitly, and the decision records it (`policy`).

Every decision is appended to RUN_DIR/decisions.jsonl (fsync'ed) and, by the caller, to the
transcript. Nothing here prompts anyone: asking is the CLI's job.
"""

from __future__ import annotations

import fcntl
import functools
import getpass
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from agent.authoring.candidates import (
    CandidateRecord,
    Decision,
    candidate_dir,
    load_candidate,
    now_iso,
    save_candidate,
)
from agent.errors import UserError
from agent.llm.transcript import append_event
from agent.metrics.contract import code_sha256
from agent.metrics.library import Approval as LibraryApproval
from agent.metrics.library import LibraryEntry, Provenance, promote

__all__ = [
    "DECISION_LOG",
    "GateRefused",
    "approve",
    "current_approver",
    "promote_candidate",
    "record_edit",
    "reject",
]

DECISION_LOG = "decisions.jsonl"
TRANSCRIPT_NAME = "transcript.jsonl"  # the authoring session's record, in the same run directory


class GateRefused(UserError):
    """The decision cannot be taken in the candidate's current state; the message says why and what to do."""


def current_approver() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an anonymous container user
        return f"uid {os.getuid()}"


def _append_decision(run_dir: Path, candidate_id: str, decision: Decision) -> None:
    """To the run's decision log, and to the transcript of the session that made the candidate."""
    record = {"candidate": candidate_id, **decision.model_dump(mode="json")}
    with open(run_dir / DECISION_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(record, ensure_ascii=False) + "\n")
        log.flush()
        os.fsync(log.fileno())
    transcript = run_dir / TRANSCRIPT_NAME
    if transcript.is_file():
        append_event(transcript, "decision", record)


P = ParamSpec("P")
R = TypeVar("R")


def _one_decision_at_a_time(decide: Callable[Concatenate[Path, P], R]) -> Callable[Concatenate[Path, P], R]:
    """Run a decision on a run's candidates under the run's lock: an approve and a reject of the same
    candidate from two processes each read it pending, and both were logged, the last write winning."""

    @functools.wraps(decide)
    def locked(run_dir: Path, *args: P.args, **kwargs: P.kwargs) -> R:
        with open(Path(run_dir) / ".decisions.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                return decide(run_dir, *args, **kwargs)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return locked


def _checked(run_dir: Path, candidate_id: str) -> tuple[CandidateRecord, str]:
    """The record and its code's current hash; a changed file sends the candidate back to pending."""
    record = load_candidate(run_dir, candidate_id)
    path = candidate_dir(run_dir, candidate_id) / "metric.py"
    try:
        sha = code_sha256(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateRefused(f"{path} is missing; this candidate cannot be decided on") from None
    if sha != record.code_sha256:
        if record.status != "pending" or record.approval is not None:
            save_candidate(run_dir, record.model_copy(update={"status": "pending", "approval": None}))
        raise GateRefused(
            f"{candidate_id}: metric.py changed since it was validated (sha256 {sha[:12]}, validated "
            f"{record.code_sha256[:12]}); validate it again (`metricsmith review {run_dir}`, then edit) before deciding"
        )
    return record, sha


@_one_decision_at_a_time
def approve(
    run_dir: Path, candidate_id: str, by: str | None = None, note: str | None = None, policy: str | None = None
) -> CandidateRecord:
    """pending -> approved, bound to the current code's sha256."""
    record, sha = _checked(run_dir, candidate_id)
    if record.status != "pending":
        raise GateRefused(f"{candidate_id} is {record.status}; only a pending candidate can be approved")
    if not record.validation_passed:
        raise GateRefused(f"{candidate_id} did not pass validation; only validated code can be approved")
    decision = Decision(
        action="approve", code_sha256=sha, by=by or current_approver(), at=now_iso(), note=note, policy=policy
    )
    updated = record.model_copy(update={"status": "approved", "approval": decision})
    save_candidate(run_dir, updated)
    _append_decision(run_dir, candidate_id, decision)
    return updated


@_one_decision_at_a_time
def reject(run_dir: Path, candidate_id: str, reason: str, by: str | None = None) -> CandidateRecord:
    """pending -> rejected, with the reason."""
    if not reason.strip():
        raise GateRefused("a rejection needs a reason (--reason TEXT)")
    record = load_candidate(run_dir, candidate_id)
    if record.status != "pending":
        raise GateRefused(f"{candidate_id} is {record.status}; only a pending candidate can be rejected")
    decision = Decision(
        action="reject", code_sha256=record.code_sha256, by=by or current_approver(), at=now_iso(), note=reason
    )
    updated = record.model_copy(update={"status": "rejected", "rejection": decision})
    save_candidate(run_dir, updated)
    _append_decision(run_dir, candidate_id, decision)
    return updated


@_one_decision_at_a_time
def record_edit(run_dir: Path, candidate_id: str, new_code: str, by: str | None = None) -> CandidateRecord:
    """New code for a candidate: saved, back to pending, approval void, validation to be run again."""
    record = load_candidate(run_dir, candidate_id)
    if record.status == "promoted":
        raise GateRefused(f"{candidate_id} is already promoted; edit it as a new candidate instead")
    sha = code_sha256(new_code)
    path = candidate_dir(run_dir, candidate_id) / "metric.py"
    temporary = path.with_name(".metric.py.tmp")
    temporary.write_text(new_code, encoding="utf-8")
    os.replace(temporary, path)
    decision = Decision(action="edit", code_sha256=sha, by=by or current_approver(), at=now_iso())
    # What was measured of the old code says nothing of the new: shown beside it, it read as the new code's.
    for stale in ("validation.json", "scores.csv", "report.html"):
        (path.parent / stale).unlink(missing_ok=True)
    updated = record.model_copy(
        update={
            "status": "pending",
            "approval": None,
            "rejection": None,
            "code_sha256": sha,
            "validation_passed": False,
            "evaluation": None,
            "usefulness": None,
        }
    )
    save_candidate(run_dir, updated)
    _append_decision(run_dir, candidate_id, decision)
    return updated


@_one_decision_at_a_time
def promote_candidate(run_dir: Path, candidate_id: str, library: Path, by: str | None = None) -> LibraryEntry:
    """approved -> promoted: the approved code goes into the library as a new version of its NAME."""
    record, sha = _checked(run_dir, candidate_id)
    if record.status != "approved" or record.approval is None:
        raise GateRefused(f"{candidate_id} is {record.status}; only an approved candidate can be promoted")
    if record.approval.code_sha256 != sha:
        raise GateRefused(f"{candidate_id}: the approval was for other code; approve the current code first")
    folder = candidate_dir(run_dir, candidate_id)
    validation_path = folder / "validation.json"
    validation = json.loads(validation_path.read_text()) if validation_path.exists() else None
    transcript = run_dir / record.transcript if record.transcript else None
    entry = promote(
        library,
        (folder / "metric.py").read_text(encoding="utf-8"),
        LibraryApproval(
            approver=record.approval.by,
            approved_at=record.approval.at,
            note=record.approval.note,
            policy=record.approval.policy,
            code_sha256=record.approval.code_sha256,
        ),
        Provenance(
            backend=record.backend,
            model=record.model,
            transcript=str(transcript) if transcript else None,
            transcript_sha256=hashlib.sha256(transcript.read_bytes()).hexdigest()
            if transcript and transcript.exists()
            else None,
            templates=record.templates,
            dataset_fingerprint=record.dataset_fingerprint,
            idea=record.idea,
            run_dir=str(run_dir),
        ),
        validation=validation,
        evaluation=record.evaluation,
    )
    decision = Decision(
        action="promote", code_sha256=sha, by=by or current_approver(), at=now_iso(), note=f"v{entry.manifest.version}"
    )
    save_candidate(run_dir, record.model_copy(update={"status": "promoted", "library_version": entry.manifest.version}))
    _append_decision(run_dir, candidate_id, decision)
    return entry
