"""The repair loop's pure parts: traceback trimming, error signatures, the repair context and the loop guard."""

from __future__ import annotations

import json
import linecache
import traceback
from pathlib import Path

import pytest

from agent.authoring.repair import (
    LoopGuard,
    error_signature,
    normalise_message,
    repair_context,
    trim_traceback,
)
from agent.authoring.validation import CheckResult, Failure, ScoreStats, Timing, ValidationReport
from agent.authoring.validation_set import ValidationSet
from agent.data.coco import load_coco
from agent.metrics.contract import code_sha256

METRIC = "/tmp/run-3/candidates/box_ratio-1a2b3c4d/metric.py"

# What the worker sends for a metric that fails inside numpy, except that the harness frames the
# worker normally cuts are left in, and the worker's SIGALRM handler sits at the bottom.
WORKER_TRACEBACK = f"""Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/metricsmith/sandbox/worker.py", line 236, in _run_call
    value = function(*args)
            ^^^^^^^^^^^^^^^
  File "{METRIC}", line 21, in score
    return _ratio(crop)
           ^^^^^^^^^^^^
  File "{METRIC}", line 14, in _ratio
    return float(np.percentile(crop, 95) / crop.std())
                 ^^^^^^^^^^^^^^^^^^^^^^^
  File "/opt/py/lib/python3.11/site-packages/numpy/lib/_function_base_impl.py", line 4238, in percentile
    return _quantile_unchecked(
           ^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3/dist-packages/metricsmith/sandbox/worker.py", line 205, in _on_alarm
    raise _SoftTimeout
IndexError: index 5 is out of bounds for axis 0 with size 3 (reading {METRIC})
"""


def test_trimming_keeps_the_metric_frames_and_what_they_called() -> None:
    trimmed = trim_traceback(WORKER_TRACEBACK, METRIC)
    assert trimmed == (
        "Traceback (most recent call last):\n"
        '  File "metric.py", line 21, in score\n'
        "    return _ratio(crop)\n"
        "           ^^^^^^^^^^^^\n"
        '  File "metric.py", line 14, in _ratio\n'
        "    return float(np.percentile(crop, 95) / crop.std())\n"
        "                 ^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "numpy/lib/_function_base_impl.py", line 4238, in percentile\n'
        "    return _quantile_unchecked(\n"
        "           ^^^^^^^^^^^^^^^^^^^^\n"
        "IndexError: index 5 is out of bounds for axis 0 with size 3 (reading metric.py)"
    )


def _raise_from_metric() -> str:
    """A real traceback: metric code compiled under its file name and called from this test (the harness)."""
    source = "def score(image, obj, scene):\n    return obj['bbox'][7]\n"
    linecache.cache[METRIC] = (len(source), None, source.splitlines(True), METRIC)
    namespace: dict = {}
    exec(compile(source, METRIC, "exec"), namespace)
    try:
        try:
            namespace["score"](None, {"bbox": [1, 2, 3, 4]}, {})
        except IndexError as error:
            raise RuntimeError("scoring failed") from error
    except RuntimeError:
        return traceback.format_exc()
    raise AssertionError("unreachable")


def test_trimming_a_real_chained_traceback_drops_the_callers_frames() -> None:
    text = _raise_from_metric()
    assert "test_repair.py" in text and METRIC in text
    trimmed = trim_traceback(text, METRIC)
    assert "test_repair.py" not in trimmed and "/tmp/" not in trimmed
    assert '  File "metric.py", line 2, in score' in trimmed
    assert "The above exception was the direct cause of the following exception:" in trimmed
    assert trimmed.endswith("RuntimeError: scoring failed")


def test_a_long_traceback_keeps_its_head_and_tail() -> None:
    text = "Traceback (most recent call last):\n" + "x" * 10_000 + "\nMemoryError: boom"
    trimmed = trim_traceback(text, METRIC, limit=100)
    assert trimmed.startswith("Traceback (most recent call last):\n")
    assert trimmed.endswith("MemoryError: boom")
    assert "characters cut" in trimmed
    assert len(trimmed) < 300
    assert trim_traceback("", METRIC) == ""


# -- signatures -------------------------------------------------------------------------------------


def _failure(message: str, line: int = 14, check: str = "error_rate", error_type: str = "IndexError") -> Failure:
    tb = WORKER_TRACEBACK.replace(", line 14, in _ratio", f", line {line}, in _ratio")
    tb = tb.replace(
        "IndexError: index 5 is out of bounds for axis 0 with size 3 (reading " + METRIC + ")",
        f"{error_type}: {message}",
    )
    return Failure(
        check=check,  # type: ignore[arg-type]
        message=f"{error_type}: {message}",
        metric_file=METRIC,
        item=f"the box at [{line}, 2, 3, 4] (annotation {line})",
        error_kind="exception",
        traceback=tb,
    )


def test_the_same_error_on_other_items_and_values_has_one_signature() -> None:
    a = _failure("index 5 is out of bounds for axis 0 with size 3")
    b = _failure("index 12 is out of bounds for axis 1 with size 7")
    assert error_signature(a) == error_signature(b)
    assert error_signature(a) == "error_rate|IndexError|_ratio:14|index N is out of bounds for axis N with size N"
    assert error_signature(_failure("'area'", error_type="KeyError")) == error_signature(
        _failure('"segmentation"', error_type="KeyError")
    )


def test_different_errors_have_different_signatures() -> None:
    base = error_signature(_failure("index 5 is out of bounds for axis 0 with size 3"))
    assert error_signature(_failure("index 5 is out of bounds for axis 0 with size 3", line=15)) != base
    assert error_signature(_failure("index 5 is out of bounds", error_type="ValueError")) != base
    assert error_signature(_failure("division by zero", error_type="IndexError")) != base
    assert error_signature(_failure("index 5 is out of bounds for axis 0 with size 3", check="finite_outputs")) != base


def test_signatures_of_failures_without_traceback() -> None:
    constant = Failure(check="not_constant", message="every one of the 49 scored items got 0.5", metric_file=METRIC)
    other = Failure(check="not_constant", message="every one of the 51 scored items got 0.25", metric_file=METRIC)
    assert (
        error_signature(constant) == error_signature(other) == ("not_constant|||every one of the N scored items got N")
    )
    timeout = Failure(
        check="error_rate", message="score() ran past the 10 s time limit", metric_file=METRIC, error_kind="timeout"
    )
    assert error_signature(timeout).startswith("error_rate|timeout||")


def test_normalise_message() -> None:
    assert normalise_message("got 'abc' and \"d e\" at 0x7f3a, -1.5e-3 and 42") == "got '…' and '…' at N, N and N"


# -- the repair context -----------------------------------------------------------------------------


def _report(failure: Failure | None) -> ValidationReport:
    return ValidationReport(
        metric="box_ratio",
        level="object",
        output="score",
        code_sha256="0" * 64,
        passed=failure is None,
        max_error_rate=0.05,
        checks=[CheckResult(name="loads", status="passed", detail="module-level code ran")],
        first_failure=failure,
        stats=ScoreStats(
            n_items=0,
            n_scored=0,
            n_none=0,
            n_errors=0,
            errors_by_kind={},
            min=None,
            q1=None,
            median=None,
            q3=None,
            max=None,
            distinct=0,
        ),
        edge_cases=[],
        correlations=[],
        timing=Timing(runs_s=[0.1], workers=1, mean_item_s=None, budget_s=1.0, timeout_s=10.0, timeouts=0),
    )


def _validation_set(tmp_path: Path) -> ValidationSet:
    document = {
        "images": [{"id": 3, "file_name": "003.jpg", "width": 320, "height": 240}],
        "annotations": [{"id": 14, "image_id": 3, "category_id": 2, "bbox": [14, 2, 3, 4], "area": 12, "iscrowd": 0}],
        "categories": [{"id": 2, "name": "fox"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(document))
    return ValidationSet(dataset=load_coco(tmp_path / "annotations.json"), edge_cases={})


def test_the_repair_context_carries_what_the_template_needs(tmp_path: Path) -> None:
    failure = _failure("index 5 is out of bounds for axis 0 with size 3").model_copy(
        update={"image_id": 3, "annotation_id": 14}
    )
    context = repair_context(_report(failure), _validation_set(tmp_path))
    assert context.check == "error_rate"
    assert context.message == "IndexError: index 5 is out of bounds for axis 0 with size 3"
    assert context.item is not None
    assert (context.item.image_id, context.item.annotation_id, context.item.category) == (3, 14, "fox")
    assert (context.item.width, context.item.height, context.item.bbox) == (320, 240, (14.0, 2.0, 3.0, 4.0))
    assert context.item.description == "the box at [14, 2, 3, 4] (annotation 14)"
    assert context.traceback is not None
    assert context.traceback.startswith('Traceback (most recent call last):\n  File "metric.py", line 21')
    assert "worker.py" not in context.traceback
    assert context.stdout is None and context.stderr is None  # the sandbox does not capture print()


def test_a_passing_report_has_nothing_to_repair(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to repair"):
        repair_context(_report(None), _validation_set(tmp_path))


def test_a_check_without_item_has_no_item_nor_traceback(tmp_path: Path) -> None:
    failure = Failure(check="not_constant", message="every one of the 49 scored items got 0.5", metric_file=METRIC)
    context = repair_context(_report(failure), _validation_set(tmp_path))
    assert context.item is None and context.traceback is None


# -- the loop guard ---------------------------------------------------------------------------------


def test_the_loop_stops_on_repeated_code() -> None:
    guard = LoopGuard()
    assert guard.observe(code_sha256("a"), "sig-1") is None
    assert guard.observe(code_sha256("b"), "sig-2") is None
    assert guard.observe(code_sha256("a"), "sig-3") == "repeated_code"


def test_the_loop_stops_on_a_repeated_error() -> None:
    guard = LoopGuard()
    assert guard.observe(code_sha256("a"), "sig-1") is None
    assert guard.observe(code_sha256("b"), None) is None  # passed: nothing to repeat
    assert guard.observe(code_sha256("c"), "sig-1") == "repeated_error"


def test_tokens_are_counted_against_the_cap() -> None:
    guard = LoopGuard(token_cap=1000)
    assert guard.spend(600) is False
    assert guard.spend(400) is False  # exactly at the cap is still within it
    assert guard.spend(1) is True
    assert guard.tokens == 1001
    with pytest.raises(ValueError):
        guard.spend(-1)


def test_a_new_draft_forgets_errors_but_not_code_nor_tokens() -> None:
    guard = LoopGuard(token_cap=100)
    assert guard.observe(code_sha256("a"), "sig-1") is None
    guard.spend(80)
    guard.new_draft()
    assert guard.tried(code_sha256("a")) and not guard.tried(code_sha256("b"))
    assert guard.observe(code_sha256("b"), "sig-1") is None  # the same error, but in a fresh draft
    assert guard.spend(30) and guard.over_cap()
