"""A candidate changed after the loop: a human edit in $EDITOR, and validating its code again.

`metricsmith review` (edit) and the `chat` REPL (`/edit`, `/run`) share these. The gate's rule
holds throughout: new code goes through `agent.review.gate.record_edit` (back to pending, any approval
void) before it is validated, so a decision is never bound to code nobody validated.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.authoring.candidates import CandidateRecord, candidate_dir, save_candidate, write_json_atomic
from agent.authoring.validation import ValidationReport, validate
from agent.authoring.validation_set import load_validation_set
from agent.errors import UserError
from agent.metrics.contract import MetricSpec, code_sha256, parse_metric_source
from agent.review.gate import current_approver, record_edit
from sandbox.isolation import SandboxConfig

__all__ = ["Editor", "edit_candidate", "open_in_editor", "revalidate_candidate"]

# Opens a file for a human to change, and returns when they are done.
Editor = Callable[[Path], None]


def open_in_editor(path: Path) -> None:
    """$VISUAL, else $EDITOR, else vi, on `path`; returns when the editor exits."""
    variable = "VISUAL" if os.environ.get("VISUAL") else "EDITOR" if os.environ.get("EDITOR") else None
    editor = os.environ.get(variable) if variable else "vi"
    try:
        subprocess.run([*shlex.split(editor or "vi"), str(path)], check=False)
    except (OSError, ValueError) as error:  # not found, not executable, unbalanced quotes
        named = f"${variable} ({editor!r})" if variable else "vi (set $EDITOR to choose another)"
        raise UserError(f"cannot run the editor {named}: {getattr(error, 'strerror', None) or error}") from None


def revalidate_candidate(
    run: Path,
    record: CandidateRecord,
    *,
    sandbox: SandboxConfig | None = None,
    library: Sequence[MetricSpec] = (),
) -> tuple[CandidateRecord, ValidationReport]:
    """Validate metric.py as it is now; code changed by hand since validation is recorded as an edit first."""
    path = candidate_dir(run, record.id) / "metric.py"
    source = path.read_text(encoding="utf-8")
    if code_sha256(source) != record.code_sha256:
        record = record_edit(run, record.id, source, by=current_approver())
    spec = parse_metric_source(source, path=str(path))  # breaking the contract: a UserError naming the file
    report = validate(spec, load_validation_set(run / "validation-set"), sandbox or SandboxConfig(), library=library)
    write_json_atomic(path.parent / "validation.json", report)
    updated = record.model_copy(update={"validation_passed": report.passed})
    save_candidate(run, updated)
    return updated, report


def edit_candidate(
    run: Path,
    record: CandidateRecord,
    editor: Editor = open_in_editor,
    *,
    sandbox: SandboxConfig | None = None,
    library: Sequence[MetricSpec] = (),
) -> CandidateRecord:
    """Open metric.py in `editor`; changed code goes back to pending and is validated again."""
    path = candidate_dir(run, record.id) / "metric.py"
    before = path.read_text(encoding="utf-8")
    editor(path)
    after = path.read_text(encoding="utf-8")
    if after == before:
        return record
    path.write_text(before, encoding="utf-8")  # record_edit writes it back itself, with the decision
    updated = record_edit(run, record.id, after, by=current_approver())
    return revalidate_candidate(run, updated, sandbox=sandbox, library=library)[0]
