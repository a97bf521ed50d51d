"""The run summary's failure lines: which failure is "first", and how it is shown, from plain rows."""

from __future__ import annotations

from collections import Counter

from agent.metrics.scoring import FirstFailure, MetricSummary, ScoreRow, error_line, failure_lines, first_failures
from sandbox.framing import PRINTED_MARKER

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "metric.py", line 9, in score\n'
    "    return 1 / 0\n"
    "           ~~^~~\n"
    "ZeroDivisionError: division by zero\n"
)


def failed(image_id: int, annotation_id: int | None, kind: str, error: str, metric: str = "boxes") -> ScoreRow:
    level = "image" if annotation_id is None else "object"
    return ScoreRow(metric, level, image_id, annotation_id, None, error_kind=kind, error=error)


def test_the_first_failure_is_the_lowest_item_whatever_order_rows_arrive_in() -> None:
    rows = [
        failed(3, 31, "exception", "Traceback ...\nKeyError: 'late'"),
        ScoreRow("boxes", "object", 1, 10, 0.5),
        failed(1, 13, "exception", "Traceback ...\nKeyError: 'thirteen'"),
        failed(2, 20, "timeout", "score() ran past the 10 s time limit"),
        failed(1, 11, "exception", TRACEBACK + PRINTED_MARKER + "some debugging output\n"),
        failed(5, None, "crash", "the worker was killed by signal 9", metric="whole"),
    ]
    names = {1: "a.png", 2: "b.png", 3: "c.png"}
    expected = {
        "boxes": {
            "exception": FirstFailure("exception", 1, 11, "a.png", "ZeroDivisionError: division by zero"),
            "timeout": FirstFailure("timeout", 2, 20, "b.png", "score() ran past the 10 s time limit"),
        },
        "whole": {"crash": FirstFailure("crash", 5, None, None, "the worker was killed by signal 9")},
    }
    assert first_failures(rows, names) == expected
    assert first_failures(reversed(rows), names) == expected


def test_error_line_is_the_last_line_before_what_the_metric_printed() -> None:
    assert error_line(TRACEBACK + PRINTED_MARKER + "x = 3\nlast printed line\n") == (
        "ZeroDivisionError: division by zero"
    )
    assert error_line("cannot decode 2.png: file not found") == "cannot decode 2.png: file not found"
    assert error_line(None) == "" and error_line("\n  \n") == ""


def test_failure_lines_name_the_kind_count_first_item_and_error_most_frequent_first() -> None:
    summary = MetricSummary(
        name="boxes",
        level="object",
        failures=Counter({"timeout": 2, "exception": 2, "crash": 5}),
        first_failures={
            "exception": FirstFailure("exception", 1, 11, "a.png", "ZeroDivisionError: division by zero"),
            "timeout": FirstFailure("timeout", 2, 20, None, "score() ran past the 10 s time limit"),
            "crash": FirstFailure("crash", 4, 40, "d.png", ""),
        },
    )
    assert failure_lines(summary, width=120) == [
        "boxes: 5 crash, first at image 4 (d.png) annotation 40",
        "boxes: 2 exception, first at image 1 (a.png) annotation 11: ZeroDivisionError: division by zero",
        "boxes: 2 timeout, first at image 2 annotation 20: score() ran past the 10 s time limit",
    ]


def test_failure_lines_are_cut_to_the_width() -> None:
    message = "ValueError: " + "x" * 300
    summary = MetricSummary(
        name="whole",
        level="image",
        failures=Counter({"exception": 1}),
        first_failures={"exception": FirstFailure("exception", 7, None, "g.png", message)},
    )
    [line] = failure_lines(summary, width=80)
    prefix = "whole: 1 exception, first at image 7 (g.png): ValueError: "
    assert line == prefix + "x" * (79 - len(prefix)) + "…"
    assert len(line) == 80


def test_a_metric_without_failures_has_no_lines() -> None:
    assert failure_lines(MetricSummary(name="fine", level="image", scored=4), width=120) == []
