"""The repair loop's pure parts: what goes back to the model after a failed validation, and when to stop.

Feedback follows what worked elsewhere (see FIELD_NOTES §2): the failing check, the item it failed
on, and a traceback trimmed to the metric's own frames, with absolute paths made relative and at
most the first and last 2,500 characters kept (AIDE's recipe). The loop stops when a round brings
back code it has already tried or an error it has already seen (one agent repeated the same failing
command 300 times), and when an idea has spent its token budget.

Nothing here runs code or touches files: everything is a function of its arguments.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.authoring.prompting import FailedItem, RepairContext
from agent.authoring.validation import Failure, ValidationReport
from agent.authoring.validation_set import ValidationSet

TRACEBACK_LIMIT = 2500
DEFAULT_TOKEN_CAP = 60_000

StopReason = Literal["repeated_code", "repeated_error"]

_FRAME = re.compile(r'^(?P<indent>\s*)File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>.+)$')
_FILE_REFERENCE = re.compile(r'File "(?P<file>[^"]+)"')
# An absolute path of two components or more, not preceded by a word character (so "w/h" and
# "1/2" are left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w./~])/(?:[\w.+@-]+/)+[\w.+@-]+")
_SITE = re.compile(r"/(?:site|dist)-packages/(.+)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(.+)$")
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
# The harness's own code: the worker's frames above the metric, or its SIGALRM handler below it.
_PACKAGE_DIRS = tuple(str(Path(__file__).resolve().parent.parent / name) + os.sep for name in ("agent", "sandbox"))
_HARNESS_SUFFIXES = ("sandbox/worker.py", "sandbox/engine.py", "sandbox/host.py", "agent/metrics/scoring.py")


# -- tracebacks -------------------------------------------------------------------------------------


def _is_metric(path: str, metric_path: str) -> bool:
    return path == metric_path or os.path.basename(path) == os.path.basename(metric_path)


def _is_harness(path: str) -> bool:
    return path.startswith(_PACKAGE_DIRS) or path.endswith(_HARNESS_SUFFIXES)


def _short_path(path: str, metric_path: str) -> str:
    """The metric by its file name, a library by its path inside site-packages, anything else by name."""
    if _is_metric(path, metric_path):
        return os.path.basename(metric_path)
    for pattern in (_SITE, _STDLIB):
        found = pattern.search(path)
        if found:
            return found.group(1)
    return os.path.basename(path) if path.startswith("/") else path


def _split_blocks(lines: list[str]) -> list[tuple[re.Match[str] | None, list[str]]]:
    """Lines grouped into frames (header match, header + its source/caret lines) and other lines."""
    blocks: list[tuple[re.Match[str] | None, list[str]]] = []
    for line in lines:
        frame = _FRAME.match(line)
        if frame is not None:
            blocks.append((frame, [line]))
            continue
        current = blocks[-1] if blocks else None
        if current is not None and current[0] is not None:
            indent = len(current[0].group("indent"))
            if line.startswith(" " * (indent + 2)) and line.strip():
                current[1].append(line)
                continue
        blocks.append((None, [line]))
    return blocks


def _keep_frames(blocks: list[tuple[re.Match[str] | None, list[str]]], metric_path: str) -> list[str]:
    """Per traceback section: drop harness frames, and every frame above the metric's first one.

    In a chained traceback, a section without any metric frame is the caller's re-raise: all of its
    frames go. Only when no section names the metric (a traceback of something else) are the
    non-harness frames all kept, rather than leaving nothing.
    """
    kept: list[str] = []
    section: list[tuple[re.Match[str] | None, list[str]]] = []
    anywhere = any(frame is not None and _is_metric(frame.group("file"), metric_path) for frame, _ in blocks)

    def flush() -> None:
        files = [frame.group("file") for frame, _ in section if frame is not None]
        first_metric = next((i for i, file in enumerate(files) if _is_metric(file, metric_path)), None)
        if first_metric is None:
            first_metric = len(files) if anywhere else 0
        index = -1
        for frame, lines in section:
            if frame is not None:
                index += 1
                if index < first_metric or _is_harness(frame.group("file")):
                    continue
            kept.extend(lines)
        section.clear()

    for frame, lines in blocks:
        # A new "Traceback (most recent call last):" starts a section of its own (chained exceptions).
        if frame is None and lines[0].startswith("Traceback (most recent call last)"):
            flush()
        section.append((frame, lines))
    flush()
    return kept


def relative_paths(text: str, metric_path: str) -> str:
    """Every absolute path in `text` shortened as in tracebacks; the metric's path becomes its file name."""
    if metric_path:
        text = text.replace(metric_path, os.path.basename(metric_path))
    text = _FILE_REFERENCE.sub(lambda m: f'File "{_short_path(m.group("file"), metric_path)}"', text)
    return _ABSOLUTE_PATH.sub(lambda m: _short_path(m.group(0), metric_path), text)


def head_and_tail_chars(text: str, limit: int) -> str:
    """`text` itself, or its first and last `limit` characters with a note of how much was cut."""
    if len(text) <= 2 * limit:
        return text
    cut = len(text) - 2 * limit
    return f"{text[:limit]}\n... ({cut} characters cut) ...\n{text[-limit:]}"


def trim_traceback(text: str, metric_path: str, limit: int = TRACEBACK_LIMIT) -> str:
    """The metric's frames and what they called, harness frames gone, paths relative, at most 2×limit chars."""
    if not text:
        return ""
    lines = _keep_frames(_split_blocks(text.splitlines()), metric_path)
    return head_and_tail_chars(relative_paths("\n".join(lines), metric_path).rstrip("\n"), limit)


# -- repeated errors --------------------------------------------------------------------------------


def normalise_message(message: str) -> str:
    """Quoted values and numbers replaced by placeholders: the same bug on another item reads the same."""
    message = _QUOTED.sub("'…'", message)
    message = _NUMBER.sub("N", message)
    return " ".join(message.split())


def _exception(failure: Failure) -> tuple[str, str]:
    """(exception type, message) from the failure's last traceback line or message; the kind otherwise."""
    source = failure.message
    if failure.traceback:
        tail = failure.traceback.strip().splitlines()
        source = tail[-1] if tail else source
    found = _EXCEPTION_LINE.match(source.strip())
    if failure.traceback and found is not None:
        return found.group("type"), found.group("message") or ""
    return failure.error_kind or "", failure.message


def _last_metric_frame(failure: Failure) -> str:
    if not failure.traceback:
        return ""
    frames = [m for m in map(_FRAME.match, failure.traceback.splitlines()) if m is not None]
    mine = [m for m in frames if _is_metric(m.group("file"), failure.metric_file)]
    if not mine:
        return ""
    return f"{mine[-1].group('function')}:{mine[-1].group('line')}"


def error_signature(failure: Failure) -> str:
    """check | exception type | the metric's last frame (function:line) | normalised message."""
    error_type, message = _exception(failure)
    return "|".join((failure.check, error_type, _last_metric_frame(failure), normalise_message(message)))


# -- the repair prompt's context --------------------------------------------------------------------


def repair_context(report: ValidationReport, validation: ValidationSet) -> RepairContext:
    """The repair prompt's context for the report's first failure: the check, the item, the trimmed traceback.

    Raises ValueError for a report without failure: there is nothing to repair. What the metric
    printed during the failed call (stdout and stderr together, head and tail) goes in as `stdout`.
    """
    failure = report.first_failure
    if failure is None:
        raise ValueError(f"validation of {report.metric} passed; there is nothing to repair")
    return RepairContext(
        check=failure.check,
        message=relative_paths(failure.message, failure.metric_file),
        item=_failed_item(failure, validation),
        traceback=trim_traceback(failure.traceback or "", failure.metric_file) or None,
        stdout=failure.printed,
    )


def _failed_item(failure: Failure, validation: ValidationSet) -> FailedItem | None:
    if failure.image_id is None:
        return None
    image = next((image for image in validation.dataset.images if image.id == failure.image_id), None)
    if image is None:
        return None
    item = FailedItem(
        image_id=image.id, file_name=image.file_name, width=image.width, height=image.height, description=failure.item
    )
    if failure.annotation_id is None:
        return item
    annotation = next((a for a in validation.dataset.annotations if a.id == failure.annotation_id), None)
    if annotation is None:
        return item
    names = {category.id: category.name for category in validation.dataset.categories}
    return item.model_copy(
        update={
            "annotation_id": annotation.id,
            "category": names.get(annotation.category_id),
            "bbox": tuple(float(v) for v in annotation.bbox),
        }
    )


# -- when to stop -----------------------------------------------------------------------------------


@dataclass
class LoopGuard:
    """One idea's repair rounds: stops on code or an error seen before, and counts tokens against a cap."""

    token_cap: int = DEFAULT_TOKEN_CAP
    tokens: int = 0
    codes: set[str] = field(default_factory=set)
    signatures: set[str] = field(default_factory=set)

    def new_draft(self) -> None:
        """A fresh draft may meet an error an earlier draft met; only a repeat within a draft means it is stuck.

        Code hashes and tokens carry over: the same code is no better in a new draft.
        """
        self.signatures.clear()

    def tried(self, code_sha: str) -> bool:
        """Whether this code was validated before, in any draft of the idea."""
        return code_sha in self.codes

    def over_cap(self) -> bool:
        return self.tokens > self.token_cap

    def observe(self, code_sha: str, signature: str | None) -> StopReason | None:
        """Record a round's code hash and failure signature (None when it passed); why to stop, if so."""
        if code_sha in self.codes:
            return "repeated_code"
        self.codes.add(code_sha)
        if signature is None:
            return None
        if signature in self.signatures:
            return "repeated_error"
        self.signatures.add(signature)
        return None

    def spend(self, n: int) -> bool:
        """Count `n` tokens; True once the idea has spent more than its cap."""
        if n < 0:
            raise ValueError(f"tokens spent must be >= 0, got {n}")
        self.tokens += n
        return self.over_cap()
