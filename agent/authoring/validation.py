"""Validation of a candidate metric in the sandbox, before anyone looks at its scores.

A candidate runs on a small validation set (`agent.authoring.validation_set`): about 64 items sampled from the
user's dataset plus the edge cases that break naive code (an image without boxes, a greyscale image,
a 2×2 box, a box on the border, a box partly outside the image).

`validate` scores the set twice through `agent.metrics.scoring.score_dataset` (the second run is the
determinism check) and runs these checks, in this order, each named in the report:

    loads           the module-level code ran (else its traceback; the other checks are skipped)
    error_rate      failed calls <= max_error_rate, and none on an edge case: a metric that crashes
                    on a 2×2 box will crash on every tiny box of a real dataset
    finite_outputs  no NaN, infinity or non-number (the worker records those as invalid_output);
                    zero tolerance, since None exists for "not applicable"
    not_constant    at least 2 distinct values among the scored items, and not most of them crowded
                    at the suspicious end (within 1% of the score range of the most suspicious value)
    class_scope     for an idea about one class's boxes ("fox boxes that ..."; prompting.idea_class_scope):
                    boxes of the other classes get None, so that only that class is ranked
    deterministic   the second run gives the same result for every item
    time_budget     no call timed out, and the mean wall time per item is within the budget; the first
                    call past the limit ends validation there (the other checks are skipped)
    not_duplicate   with library metrics given: Spearman |rho| < 0.95 with each one of the same level

Every check runs (bar `loads` failing, or a call past the time limit), so one round shows the model
everything that is wrong; the first failure is spelled out with the item, the error kind and the
trimmed traceback.

Time per item is measured from outside, as the run's wall time × workers used / items: an upper
bound (it includes worker start-up, about 0.1 s per run), since the sandbox reports no per-call
timings. `SandboxConfig.timeout_s` stays the hard limit of a single call.

What a metric printed during a failed call (head and tail; the worker captures it per call) comes
back after the error, and the report keeps it as the failure's `printed`, for the repair prompt.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict

from agent.authoring.validation_set import EdgeCaseName, ItemKey, ValidationSet
from agent.data.coco import Dataset
from agent.evaluation.ranking import (
    MetricEvaluation,
    check_files,
    evaluate,
    ground_truth,
    load_error_labels,
    scores_from_rows,
)
from agent.metrics.contract import MetricSpec
from agent.metrics.scoring import ScoreOutcome, ScoreRow, error_line, score_dataset
from sandbox.framing import PRINTED_MARKER
from sandbox.isolation import SandboxConfig

CheckName = Literal[
    "loads",
    "error_rate",
    "finite_outputs",
    "not_constant",
    "class_scope",
    "deterministic",
    "time_budget",
    "not_duplicate",
]

DUPLICATE_RHO = 0.95
DEFAULT_MAX_ERROR_RATE = 0.05
DEFAULT_TIME_BUDGET_S = 1.0
_TIMEOUT_KINDS = frozenset({"timeout", "hard_timeout"})


# -- the report -------------------------------------------------------------------------------------


class CheckResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: CheckName
    status: Literal["passed", "failed", "skipped"]
    detail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Failure(BaseModel):
    """The first failing check, spelled out for a repair prompt."""

    model_config = ConfigDict(frozen=True)

    check: CheckName
    message: str  # the exception line, or what the check found
    metric_file: str  # how tracebacks name the metric's file
    item: str | None = None  # `ValidationSet.describe` of the item, when one item is to blame
    image_id: int | None = None
    annotation_id: int | None = None
    edge_case: EdgeCaseName | None = None
    error_kind: str | None = None
    traceback: str | None = None
    printed: str | None = None  # what the metric printed during the failed call (head and tail)


class ScoreStats(BaseModel):
    n_items: int
    n_scored: int
    n_none: int
    n_errors: int
    errors_by_kind: dict[str, int]
    min: float | None
    q1: float | None
    median: float | None
    q3: float | None
    max: float | None
    distinct: int


class EdgeCaseOutcome(BaseModel):
    edge_case: EdgeCaseName
    image_id: int
    annotation_id: int | None
    item: str
    outcome: Literal["scored", "none", "error"]
    score: float | None = None
    error_kind: str | None = None
    error: str | None = None


class LibraryCorrelation(BaseModel):
    metric: str
    rho: float | None  # None when fewer than 3 items are scored by both, or one is constant there
    n_items: int
    duplicate: bool


class Timing(BaseModel):
    runs_s: list[float]
    workers: int
    mean_item_s: float | None
    budget_s: float
    timeout_s: float
    timeouts: int


class ValidationReport(BaseModel):
    """Everything validation found; written to the run directory as validation.json."""

    metric: str
    level: str
    output: str
    code_sha256: str
    passed: bool
    max_error_rate: float
    checks: list[CheckResult]
    first_failure: Failure | None
    stats: ScoreStats
    edge_cases: list[EdgeCaseOutcome]
    correlations: list[LibraryCorrelation]
    timing: Timing
    load_error: str | None = None

    def check(self, name: CheckName) -> CheckResult:
        return next(check for check in self.checks if check.name == name)


# -- validation -------------------------------------------------------------------------------------


def validate(
    spec: MetricSpec,
    validation: ValidationSet,
    config: SandboxConfig,
    *,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    library: Sequence[MetricSpec] | None = None,
    scope: str | None = None,
) -> ValidationReport:
    """Run `spec` on the validation set twice in the sandbox and check it (see the module docstring).

    `scope`: the class whose boxes the idea is about (`agent.authoring.prompting.idea_class_scope`), if one."""
    if not 0.0 <= max_error_rate <= 1.0 or time_budget_s <= 0:
        raise ValueError(f"need 0 <= max_error_rate <= 1 and time_budget_s > 0, got {max_error_rate}, {time_budget_s}")
    try:
        first, first_s = _timed_run(validation.dataset, [spec], config, stop_at_a_timeout=True)
    except _TimedOut as stopped:
        return _stopped_at_a_timeout(spec, validation, config, stopped, max_error_rate, time_budget_s)
    rows = {_key(row): row for row in first.rows}
    load_error = first.metric_errors.get(spec.name)
    checker = _Checker(spec, validation, rows, max_error_rate)
    timing = Timing(
        runs_s=[first_s],
        workers=_workers_used(validation.dataset, spec, config),
        mean_item_s=None,
        budget_s=time_budget_s,
        timeout_s=config.timeout_s,
        timeouts=0,
    )
    correlations: list[LibraryCorrelation] = []
    if load_error is not None:
        skipped = [CheckResult(name=name, status="skipped", detail="the metric did not load") for name in _LATER_CHECKS]
        results = [_loads_failed(spec, load_error), *((check, None) for check in skipped)]
    else:
        second, second_s = _timed_run(validation.dataset, [spec], config)
        timing.runs_s.append(second_s)
        again = {_key(row): row for row in second.rows}
        if rows:
            timing.mean_item_s = min(timing.runs_s) * timing.workers / len(rows)
        timing.timeouts = sum(row.error_kind in _TIMEOUT_KINDS for row in (*rows.values(), *again.values()))
        if library:
            correlations = _correlations(spec, validation, config, library, rows)
        results = [
            (CheckResult(name="loads", status="passed", detail="module-level code ran"), None),
            checker.error_rate(),
            checker.finite_outputs(),
            checker.not_constant(),
            checker.class_scope(scope),
            checker.deterministic(again),
            checker.time_budget(timing),
            checker.not_duplicate(correlations, library is not None and len(library) > 0),
        ]
    return _report(
        spec,
        max_error_rate,
        results,
        stats=_stats(rows.values()),
        edge_cases=checker.edge_case_outcomes(),
        correlations=correlations,
        timing=timing,
        load_error=load_error,
    )


def _report(
    spec: MetricSpec,
    max_error_rate: float,
    results: Sequence[tuple[CheckResult, Failure | None]],
    *,
    stats: ScoreStats,
    edge_cases: list[EdgeCaseOutcome],
    correlations: list[LibraryCorrelation],
    timing: Timing,
    load_error: str | None = None,
) -> ValidationReport:
    """The report of the checks' (result, failure) pairs: passed when none failed, the first failure spelled out."""
    checks = [check for check, _ in results]
    return ValidationReport(
        metric=spec.name,
        level=spec.level,
        output=spec.output,
        code_sha256=spec.code_sha256,
        passed=all(check.status != "failed" for check in checks),
        max_error_rate=max_error_rate,
        checks=checks,
        first_failure=next((failure for check, failure in results if check.status == "failed"), None),
        stats=stats,
        edge_cases=edge_cases,
        correlations=correlations,
        timing=timing,
        load_error=load_error,
    )


def _stopped_at_a_timeout(
    spec: MetricSpec,
    validation: ValidationSet,
    config: SandboxConfig,
    stopped: _TimedOut,
    max_error_rate: float,
    time_budget_s: float,
) -> ValidationReport:
    """The report of a first run that a call past the time limit ended: the time budget failed on that item,
    and the checks that need every item were not run."""
    row = stopped.row
    timing = Timing(
        runs_s=[stopped.elapsed_s],
        workers=_workers_used(validation.dataset, spec, config),
        mean_item_s=None,
        budget_s=time_budget_s,
        timeout_s=config.timeout_s,
        timeouts=1,
    )
    message = (
        f"a call ran past the {config.timeout_s:g} s limit, so validation stopped there (budget "
        f"{time_budget_s * 1000:.0f} ms per item); look for a loop that never ends or work far too slow per call"
    )
    failure = _Checker(spec, validation, {_key(row): row}, max_error_rate)._failure("time_budget", row, message)
    not_run = "not run: validation stopped at the first call past the time limit"
    results: list[tuple[CheckResult, Failure | None]] = [
        (CheckResult(name="loads", status="passed", detail="module-level code ran"), None),
        *(
            (CheckResult(name=name, status="failed", detail=message), failure)
            if name == "time_budget"
            else (CheckResult(name=name, status="skipped", detail=not_run), None)
            for name in _LATER_CHECKS
        ),
    ]
    return _report(spec, max_error_rate, results, stats=_stats([]), edge_cases=[], correlations=[], timing=timing)


# Every check after `loads`, in the report's order: what a metric that did not load skips.
_LATER_CHECKS: tuple[CheckName, ...] = get_args(CheckName)[1:]


class _TimedOut(Exception):
    """A call ran past the time limit: the run stops there (`_timed_run`)."""

    def __init__(self, row: ScoreRow, elapsed_s: float) -> None:
        super().__init__(row.error)
        self.row, self.elapsed_s = row, elapsed_s


def _timed_run(
    dataset: Dataset, specs: list[MetricSpec], config: SandboxConfig, stop_at_a_timeout: bool = False
) -> tuple[ScoreOutcome, float]:
    """One run and its wall time. With `stop_at_a_timeout`, the first call past the limit ends it (`_TimedOut`):
    the time budget has failed then whatever the other items do, and a metric that loops forever would hold
    every item of both runs for the whole limit (a dozen minutes on the default set) before the model heard."""
    started = time.monotonic()

    def look(rows: list[ScoreRow]) -> None:
        timed_out = next((row for row in rows if row.error_kind in _TIMEOUT_KINDS), None)
        if timed_out is not None:
            raise _TimedOut(timed_out, time.monotonic() - started)

    outcome = score_dataset(dataset, specs, config, on_rows=look if stop_at_a_timeout else lambda rows: None)
    elapsed = time.monotonic() - started
    if outcome.interrupted:
        # A half-scored set would fail checks for reasons that have nothing to do with the metric.
        raise KeyboardInterrupt
    return outcome, elapsed


def _key(row: ScoreRow) -> ItemKey:
    return (row.image_id, row.annotation_id)


def _workers_used(dataset: Dataset, spec: MetricSpec, config: SandboxConfig) -> int:
    if spec.level == "image":
        images = len(dataset.images)
    else:
        images = len({annotation.image_id for annotation in dataset.annotations})
    return max(1, min(config.workers, images))


def _loads_failed(spec: MetricSpec, load_error: str) -> tuple[CheckResult, Failure]:
    lines = load_error.strip().splitlines()
    message = lines[-1] if lines else load_error
    failure = Failure(
        check="loads",
        message=message,
        metric_file=spec.path,
        error_kind="metric_load",
        traceback=load_error if load_error.startswith("Traceback") else None,
    )
    return CheckResult(name="loads", status="failed", detail=f"module-level code failed: {message}"), failure


class _Checker:
    """The per-item checks over one run's rows; each returns (result, failure or None)."""

    def __init__(
        self, spec: MetricSpec, validation: ValidationSet, rows: dict[ItemKey, ScoreRow], max_error_rate: float
    ) -> None:
        self.spec, self.validation, self.rows, self.max_error_rate = spec, validation, rows, max_error_rate

    def _failure(self, check: CheckName, row: ScoreRow, message: str | None = None) -> Failure:
        key = _key(row)
        # The worker appends what the metric printed during the failed call after a marker.
        error, _, printed = (row.error or "").partition(PRINTED_MARKER)
        is_traceback = row.error_kind == "exception" and error.startswith("Traceback")
        return Failure(
            check=check,
            message=message or error_line(row.error),
            metric_file=self.spec.path,
            item=self.validation.describe(*key),
            image_id=key[0],
            annotation_id=key[1],
            edge_case=self.validation.edge_cases.get(key),
            error_kind=row.error_kind,
            traceback=error if is_traceback else None,
            printed=printed or None,
        )

    def error_rate(self) -> tuple[CheckResult, Failure | None]:
        # An image that cannot be decoded is the dataset's fault, not the metric's: not counted.
        unreadable = sum(row.error_kind == "image_unreadable" for row in self.rows.values())
        failed = [row for row in self.rows.values() if row.error_kind not in (None, "image_unreadable")]
        edge = [row for row in failed if _key(row) in self.validation.edge_cases]
        counted = len(self.rows) - unreadable
        rate = len(failed) / counted if counted else 0.0
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(Counter(r.error_kind for r in failed).items()))
        summary = f"{len(failed)} of {counted} items failed ({rate:.1%}; limit {self.max_error_rate:.1%})"
        if unreadable:
            summary += f"; {unreadable} items on unreadable images not counted"
        if rate <= self.max_error_rate and not edge:
            return CheckResult(name="error_rate", status="passed", detail=summary), None
        if edge:
            names = sorted({self.validation.edge_cases[_key(row)] for row in edge})
            summary += f"; edge cases failed: {', '.join(names)}"
        # An edge case names the trouble best ("the tiny 2×2 box"), so it is the one shown.
        blamed = (edge or failed)[0]
        return CheckResult(name="error_rate", status="failed", detail=f"{summary}: {kinds}"), self._failure(
            "error_rate", blamed
        )

    def finite_outputs(self) -> tuple[CheckResult, Failure | None]:
        invalid = [row for row in self.rows.values() if row.error_kind == "invalid_output"]
        if not invalid:
            return CheckResult(name="finite_outputs", status="passed", detail="every output was valid"), None
        detail = (
            f"{len(invalid)} of {len(self.rows)} items returned NaN, infinity or a non-number "
            f"(return None for 'not applicable'); first: {invalid[0].error}"
        )
        return CheckResult(name="finite_outputs", status="failed", detail=detail), self._failure(
            "finite_outputs", invalid[0]
        )

    def not_constant(self) -> tuple[CheckResult, Failure | None]:
        scored = [row for row in self.rows.values() if row.error_kind is None and row.score is not None]
        distinct = {row.score for row in scored}
        if len(distinct) >= 2:
            tied = _near_top(np.array([row.score for row in scored], dtype=np.float64), self.spec.suspicious)
            if tied is None:
                detail = f"{len(distinct)} distinct values among {len(scored)} scored items"
                return CheckResult(name="not_constant", status="passed", detail=detail), None
            count, value = tied
            message = (
                f"{count} of the {len(scored)} scored items are within {NEAR_TIE:.0%} of the score range of the "
                f"most suspicious value, {value:.4g}: the ranking can't tell most items apart. Check each test's "
                "real range (OpenCV hue runs 0-179), and return None for items the idea is not about"
            )
            failure = Failure(check="not_constant", message=message, metric_file=self.spec.path)
            return CheckResult(name="not_constant", status="failed", detail=message), failure
        if scored:
            message = f"every one of the {len(scored)} scored items got {scored[0].score!r}: the metric ranks nothing"
        else:
            message = "no item got a score (every call returned None or failed): the metric ranks nothing"
        failure = Failure(check="not_constant", message=message, metric_file=self.spec.path)
        return CheckResult(name="not_constant", status="failed", detail=message), failure

    def class_scope(self, scope: str | None) -> tuple[CheckResult, Failure | None]:
        if scope is None or self.spec.level != "object":
            return CheckResult(name="class_scope", status="skipped", detail="the idea is not about one class"), None
        classes = {category.id: category.name for category in self.validation.dataset.categories}
        of_box = {a.id: classes.get(a.category_id) for a in self.validation.dataset.annotations}
        scored = [row for row in self.rows.values() if row.annotation_id is not None and row.score is not None]
        others = [row for row in scored if of_box.get(row.annotation_id or 0) != scope]
        if not others:
            detail = f"only {scope} boxes got a score ({len(scored)} of them)"
            return CheckResult(name="class_scope", status="passed", detail=detail), None
        message = (
            f"the idea is about {scope} boxes, but {len(others)} boxes of other classes got a score too: return "
            f'None when obj["category"] != "{scope}", so that only {scope} boxes are ranked'
        )
        return CheckResult(name="class_scope", status="failed", detail=message), self._failure(
            "class_scope", others[0], message
        )

    def deterministic(self, again: dict[ItemKey, ScoreRow]) -> tuple[CheckResult, Failure | None]:
        differing = [key for key, row in self.rows.items() if key not in again or not _same(row, again[key])]
        if not differing:
            return CheckResult(name="deterministic", status="passed", detail="a second run gave the same results"), None
        key = differing[0]
        message = (
            f"{len(differing)} of {len(self.rows)} items changed on a second run; e.g. "
            f"{_outcome(self.rows[key])} then {_outcome(again.get(key))} (use no randomness, or a fixed seed)"
        )
        failure = Failure(
            check="deterministic",
            message=message,
            metric_file=self.spec.path,
            item=self.validation.describe(*key),
            image_id=key[0],
            annotation_id=key[1],
            edge_case=self.validation.edge_cases.get(key),
        )
        return CheckResult(name="deterministic", status="failed", detail=message), failure

    def time_budget(self, timing: Timing) -> tuple[CheckResult, Failure | None]:
        mean = timing.mean_item_s
        shown = "n/a" if mean is None else f"{mean * 1000:.1f} ms"
        detail = f"mean {shown} per item (budget {timing.budget_s * 1000:.0f} ms), {timing.timeouts} timeouts"
        too_slow = mean is not None and mean > timing.budget_s
        if not too_slow and timing.timeouts == 0:
            return CheckResult(name="time_budget", status="passed", detail=detail), None
        if timing.timeouts:
            message = f"{timing.timeouts} calls ran past the {timing.timeout_s:g} s limit; {detail}"
        else:
            message = f"too slow: {detail}; avoid work repeated per call over the whole image"
        slow = next((row for row in self.rows.values() if row.error_kind in _TIMEOUT_KINDS), None)
        failure = (
            self._failure("time_budget", slow, message)
            if slow is not None
            else Failure(check="time_budget", message=message, metric_file=self.spec.path)
        )
        return CheckResult(name="time_budget", status="failed", detail=message), failure

    def not_duplicate(
        self, correlations: list[LibraryCorrelation], compared: bool
    ) -> tuple[CheckResult, Failure | None]:
        if not compared:
            return CheckResult(name="not_duplicate", status="skipped", detail="no library metrics given"), None
        duplicates = [c for c in correlations if c.duplicate]
        if not duplicates:
            shown = ", ".join(f"{c.metric} {_rho(c.rho)}" for c in correlations) or "no library metric of this level"
            return CheckResult(name="not_duplicate", status="passed", detail=f"Spearman rho: {shown}"), None
        top = max(duplicates, key=lambda c: abs(c.rho or 0.0))
        message = (
            f"duplicates library metric {top.metric} (Spearman rho = {_rho(top.rho)} over {top.n_items} items, "
            f"|rho| >= {DUPLICATE_RHO}): measure something it does not"
        )
        failure = Failure(check="not_duplicate", message=message, metric_file=self.spec.path)
        return CheckResult(name="not_duplicate", status="failed", detail=message), failure

    def edge_case_outcomes(self) -> list[EdgeCaseOutcome]:
        outcomes = []
        for key, name in self.validation.edge_cases.items():
            row = self.rows.get(key)
            if row is None:
                continue  # an item of the other level
            outcome: Literal["scored", "none", "error"] = (
                "error" if row.error_kind is not None else ("none" if row.score is None else "scored")
            )
            outcomes.append(
                EdgeCaseOutcome(
                    edge_case=name,
                    image_id=key[0],
                    annotation_id=key[1],
                    item=self.validation.describe(*key),
                    outcome=outcome,
                    score=row.score,
                    error_kind=row.error_kind,
                    error=row.error,
                )
            )
        return outcomes


# Near-constant: more than this share of the scored items sit within NEAR_TIE of the score range of
# the most suspicious value. Most items tied at the *unsuspicious* end is fine (a duplicate detector
# scores nearly every box 0); tied at the suspicious end, the top of the ranking is most of the data.
NEAR_TIE = 0.01
NEAR_CONSTANT_SHARE = 0.5


def _near_top(scores: np.ndarray, suspicious: str) -> tuple[int, float] | None:
    """(how many, the most suspicious value) when most scores crowd at the suspicious end; else None."""
    oriented = scores if suspicious == "high" else -scores
    top, span = oriented.max(), oriented.max() - oriented.min()
    crowded = int((oriented >= top - NEAR_TIE * span).sum())
    if crowded <= NEAR_CONSTANT_SHARE * len(scores):
        return None
    return crowded, float(top if suspicious == "high" else -top)


def _same(a: ScoreRow, b: ScoreRow) -> bool:
    if a.error_kind != b.error_kind:
        return False
    if a.score is None or b.score is None:
        return a.score is None and b.score is None
    return math.isclose(a.score, b.score, rel_tol=1e-9, abs_tol=1e-12)


def _outcome(row: ScoreRow | None) -> str:
    if row is None:
        return "no result"
    if row.error_kind is not None:
        return f"an error ({row.error_kind})"
    return "None" if row.score is None else f"{row.score!r}"


def _rho(rho: float | None) -> str:
    return "n/a" if rho is None else f"{rho:.3f}"


def _stats(rows: Iterable[ScoreRow]) -> ScoreStats:
    rows = list(rows)
    scores = np.array([row.score for row in rows if row.error_kind is None and row.score is not None], dtype=float)
    kinds = Counter(row.error_kind for row in rows if row.error_kind is not None)
    quartiles: list[float | None] = [None] * 5
    if scores.size:
        quartiles = [float(v) for v in np.quantile(scores, [0.0, 0.25, 0.5, 0.75, 1.0])]
    return ScoreStats(
        n_items=len(rows),
        n_scored=int(scores.size),
        n_none=sum(row.error_kind is None and row.score is None for row in rows),
        n_errors=sum(kinds.values()),
        errors_by_kind=dict(sorted(kinds.items())),
        min=quartiles[0],
        q1=quartiles[1],
        median=quartiles[2],
        q3=quartiles[3],
        max=quartiles[4],
        distinct=len(np.unique(scores)),
    )


# -- library correlation ----------------------------------------------------------------------------


def average_ranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span (as scipy.stats.rankdata)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size, dtype=float)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a: ArrayLike, b: ArrayLike) -> float | None:
    """Spearman's rho (Pearson on average ranks); None for fewer than 3 pairs or a constant side."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if x.size < 3:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denominator == 0.0:
        return None
    return float(rx @ ry) / denominator


def _correlations(
    spec: MetricSpec,
    validation: ValidationSet,
    config: SandboxConfig,
    library: Sequence[MetricSpec],
    rows: dict[ItemKey, ScoreRow],
) -> list[LibraryCorrelation]:
    # One per name: rows are keyed by metric name. The learned detectors are left out: a candidate is a
    # formula, and theirs is a classifier trained on the set it would be compared on (they share one code,
    # too, which `library_scores` keys by).
    peers = list({m.name: m for m in library if m.level == spec.level and m.combine != "learned"}.values())
    missing = [metric for metric in peers if metric.code_sha256 not in validation.library_scores]
    if missing:
        # Library metrics are trusted and approved, so they may share workers with each other, but
        # never with the candidate, which could otherwise tamper with their scores.
        outcome, _ = _timed_run(validation.dataset, missing, config)
        by_name = {metric.name: metric.code_sha256 for metric in missing}
        for metric in missing:
            validation.library_scores[metric.code_sha256] = {}
        for row in outcome.rows:
            score = row.score if row.error_kind is None else None
            validation.library_scores[by_name[row.metric]][_key(row)] = score
    candidate = {key: row.score for key, row in rows.items() if row.error_kind is None and row.score is not None}
    results = []
    for metric in peers:
        theirs = validation.library_scores[metric.code_sha256]
        pairs = [(score, other) for key, score in candidate.items() if (other := theirs.get(key)) is not None]
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
        duplicate = rho is not None and abs(rho) >= DUPLICATE_RHO
        results.append(LibraryCorrelation(metric=metric.name, rho=rho, n_items=len(pairs), duplicate=duplicate))
    return results


# -- evaluation on the full dataset -----------------------------------------------------------------


class CandidateEvaluation(BaseModel):
    """How the candidate ranks the known label errors of the full dataset, next to random ranking."""

    metric: str
    evaluation: MetricEvaluation
    random: MetricEvaluation | None
    n_items: int
    n_failed: int
    failures_by_kind: dict[str, int]


def evaluate_candidate(
    spec: MetricSpec,
    dataset: Dataset,
    errors_path: Path,
    config: SandboxConfig,
    rows: Sequence[ScoreRow] | None = None,
) -> CandidateEvaluation:
    """Evaluate the ranking (`agent.evaluation.ranking.evaluate`), scoring the full dataset unless `rows` are given."""
    truth = ground_truth(dataset, load_error_labels(errors_path))
    check_files(truth, errors_name=str(errors_path))
    if rows is None:
        rows = _timed_run(dataset, [spec], config)[0].rows
    report = evaluate(truth, scores_from_rows(rows, {spec.name: spec.suspicious}))
    own = next(row for row in report.metrics if row.metric == spec.name)
    baseline = next((row for row in report.metrics if row.metric == "random" and row.level == spec.level), None)
    failures = Counter(row.error_kind for row in rows if row.error_kind is not None)
    return CandidateEvaluation(
        metric=spec.name,
        evaluation=own,
        random=baseline,
        n_items=len(rows),
        n_failed=sum(failures.values()),
        failures_by_kind=dict(sorted(failures.items())),
    )
