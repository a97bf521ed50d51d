"""Candidates: metrics the authoring loop produced, waiting in a run directory for a human.

A run directory (`metricsmith author --out RUN_DIR`, or a batch run) holds:

    RUN_DIR/
      transcript.jsonl            # or transcripts/IDEA.jsonl in a batch run
      decisions.jsonl             # append-only log of every decision (agent.review.gate)
      candidates/ID/
        metric.py                 # the code, exactly as validated
        candidate.json            # CandidateRecord, below
        validation.json           # the sandbox validation report
        evaluation.json           # eval figures, when errors.json was given
        rationale.md              # the model's explanation

`candidate.json` is rewritten atomically (temporary file, fsync, rename) on every change. Its
`code_sha256` is the hash of the code that was validated; an approval records the hash it
approves, and anything that runs or promotes the candidate first checks metric.py still has it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import UserError

__all__ = [
    "CandidateRecord",
    "Decision",
    "author_runs",
    "candidate_dir",
    "list_candidates",
    "load_candidate",
    "locate_candidate",
    "new_candidate_id",
    "now_iso",
    "save_candidate",
    "twins",
    "write_json_atomic",
]

Status = Literal["pending", "approved", "rejected", "promoted"]
_SHA = r"^[0-9a-f]{64}$"


class Decision(BaseModel):
    """One human (or explicit policy) decision on one version of the code."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["approve", "reject", "edit", "promote", "revalidate"]
    code_sha256: str = Field(pattern=_SHA)
    by: str
    at: str
    note: str | None = None  # the approver's note, or the reason of a rejection
    policy: str | None = None  # set for --approve-passing: the criteria that approved it


class CandidateRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    id: str
    name: str
    level: str
    suspicious: str
    idea: str
    status: Status = "pending"
    code_sha256: str = Field(pattern=_SHA)
    created_at: str
    validation_passed: bool
    backend: str | None = None
    model: str | None = None
    transcript: str | None = None  # relative to the run directory
    templates: dict[str, str] = Field(default_factory=dict)
    dataset_fingerprint: str | None = None
    rounds: int = 0  # model exchanges it took
    tokens: int = 0
    approval: Decision | None = None
    rejection: Decision | None = None
    library_version: int | None = None
    evaluation: dict[str, Any] | None = None
    usefulness: dict[str, Any] | None = None  # agent.authoring.usefulness_check.Usefulness, when targets were given
    # Left by --keep-unproven: it runs, but no draft of its idea cleared the usefulness bar.
    unproven: bool = False


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_candidate_id(name: str, sha: str) -> str:
    """Readable and unique per code: the metric's NAME and the start of its hash."""
    return f"{name}-{sha[:8]}"


def candidate_dir(run_dir: Path, candidate_id: str) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9_]*-[0-9a-f]{8}", candidate_id):
        raise UserError(f"{candidate_id!r} is not a candidate id (NAME-xxxxxxxx, see `metricsmith review`)")
    return run_dir / "candidates" / candidate_id


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data.model_dump_json(indent=2) if isinstance(data, BaseModel) else json.dumps(data, indent=2)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_candidate(run_dir: Path, record: CandidateRecord) -> None:
    write_json_atomic(run_dir / "candidates" / record.id / "candidate.json", record)


def load_candidate(run_dir: Path, candidate_id: str) -> CandidateRecord:
    path = candidate_dir(run_dir, candidate_id) / "candidate.json"
    try:
        return CandidateRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        known = ", ".join(record.id for record in list_candidates(run_dir)) or "none"
        raise UserError(f"no candidate {candidate_id} in {run_dir} (candidates: {known})") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise UserError(f"{path}: invalid candidate record: {where}: {first['msg']}") from None


def author_runs(run_dir: Path) -> list[Path]:
    """The authoring run directories inside `run_dir`: itself (`author`), or each idea's (`batch`).

    A `run_dir` that is no folder is the user's mistake (a typo, a config file given instead of its run):
    a UserError, not "nothing pending".
    """
    if not run_dir.is_dir():
        what = "no such folder" if not run_dir.exists() else "a file, not a run folder"
        raise UserError(f"{run_dir}: {what}; give the run folder that `metricsmith author` or `batch` wrote")
    runs = [run_dir] if (run_dir / "candidates").is_dir() else []
    ideas = run_dir / "ideas"
    if ideas.is_dir():
        runs += [child for child in sorted(ideas.iterdir()) if not child.name.startswith(".") and child.is_dir()]
    return runs


def locate_candidate(run_dir: Path, candidate_id: str) -> Path:
    """The authoring run directory holding the candidate (`run_dir` itself, or one idea's in a batch run)."""
    candidate_dir(run_dir, candidate_id)  # checks the id's shape
    holders = [run for run in author_runs(run_dir) if (run / "candidates" / candidate_id / "candidate.json").is_file()]
    if len(holders) > 1:  # two ideas of a batch wrote the same code: the id alone can't say which is meant
        raise UserError(
            f"{candidate_id} is a candidate of {len(holders)} ideas ({', '.join(str(run) for run in holders)}); "
            "give the idea's folder instead of the run's"
        )
    if holders:
        return holders[0]
    known = ", ".join(record.id for run in author_runs(run_dir) for record in list_candidates(run)) or "none"
    raise UserError(f"no candidate {candidate_id} in {run_dir} (candidates: {known})")


def list_candidates(run_dir: Path) -> list[CandidateRecord]:
    folder = run_dir / "candidates"
    if not folder.is_dir():
        return []
    return [
        load_candidate(run_dir, child.name)
        for child in sorted(folder.iterdir())
        if (child / "candidate.json").is_file()
    ]


def twins(record: CandidateRecord, records: Sequence[CandidateRecord]) -> list[CandidateRecord]:
    """The other candidates among `records` with byte-identical code. A small model often writes the
    same line for different ideas; a batch gives each idea its own run, so only the idea and the id
    together tell two candidates apart."""
    me = (record.idea, record.id)
    return [other for other in records if other.code_sha256 == record.code_sha256 and (other.idea, other.id) != me]
