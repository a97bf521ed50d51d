"""`prepare(image, scene)`: an object metric's work on the whole image, done once per image in the worker.

The contract's static checks, what `agent.metrics.inputs` concludes from a metric that has it, and
the sandboxed worker running it: once per image, its result shared read-only by that image's calls,
and its failures (an exception, a soft or a hard timeout) becoming each of those calls' failure
while the run goes on.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hostile_helpers import assert_all_failed, hostile_source, run_hostile

from agent.metrics.contract import MetricFileError, parse_metric_source
from agent.metrics.inputs import EVERYTHING, metric_inputs

HEADER = '"""A metric with prepare()."""\n\nNAME = "prepared_metric"\nLEVEL = "{level}"\nSUSPICIOUS = "high"\n'

GOOD = textwrap.dedent(
    """
    def prepare(image, scene):
        return float(image.mean()), len(scene["annotations"])


    def score(image, obj, scene, prepared):
        mean, count = prepared
        return mean + count + obj["bbox"][0]
    """
)


def source(body: str, level: str = "object") -> str:
    return HEADER.format(level=level) + textwrap.dedent(body)


def problems_of(text: str) -> str:
    with pytest.raises(MetricFileError) as raised:
        parse_metric_source(text, "m.py")
    return str(raised.value)


def test_an_object_metric_with_prepare_passes_the_contract() -> None:
    spec = parse_metric_source(source(GOOD), "m.py")
    assert spec.name == "prepared_metric" and spec.level == "object"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # With prepare, score takes what prepare returned as a fourth argument, and nothing else.
        ("def prepare(image, scene):\n    return 1\n\ndef score(image, obj, scene):\n    return 1.0\n",
         "score must take (image, obj, scene, prepared) when the metric defines prepare()"),
        ("def prepare(image, obj, scene):\n    return 1\n\ndef score(image, obj, scene, prepared):\n    return 1.0\n",
         "prepare must take (image, scene), got (image, obj, scene)"),
        ("async def prepare(image, scene):\n    return 1\n\ndef score(image, obj, scene, prepared):\n    return 1.0\n",
         "prepare must be a plain 'def'"),
        ("import functools\n\n@functools.cache\ndef prepare(image, scene):\n    return 1\n\n"
         "def score(image, obj, scene, prepared):\n    return 1.0\n", "prepare must not be decorated"),
        ("def prepare(image, scene):\n    return 1\n\ndef prepare(image, scene):\n    return 2\n\n"
         "def score(image, obj, scene, prepared):\n    return 1.0\n", "prepare is defined more than once"),
        ("def _make(image, scene):\n    return 1\n\nprepare = _make\n\ndef score(image, obj, scene, prepared):\n"
         "    return 1.0\n", "prepare must be defined once with a plain top-level 'def prepare(...)'"),
        # Without prepare, a fourth parameter is still wrong.
        ("def score(image, obj, scene, prepared):\n    return 1.0\n",
         "score must take (image, obj, scene) for LEVEL 'object'"),
    ],
)  # fmt: skip
def test_prepare_is_checked_statically(body: str, expected: str) -> None:
    assert expected in problems_of(source(body))


def test_prepare_is_for_object_metrics_only() -> None:
    body = "def prepare(image, scene):\n    return 1\n\ndef score(image, scene):\n    return 1.0\n"
    assert "prepare is for LEVEL 'object' only" in problems_of(source(body, level="image"))


def test_a_metric_with_prepare_counts_as_reading_the_scene() -> None:
    # prepare() sees the scene, and score() sees what prepare() made of it: a selftest may not reuse its
    # scores across versions of an image, whatever score() itself reads.
    assert metric_inputs(source(GOOD), "object") == EVERYTHING
    pixels_only = "def prepare(image, scene):\n    return 1\n\n"
    pixels_only += "def score(image, obj, scene, prepared):\n    return 1.0\n"
    assert metric_inputs(source(pixels_only), "object") == EVERYTHING


ONCE_PER_IMAGE = """
import time

def prepare(image, scene):
    time.sleep(0.002)  # two prepare() calls can never share a clock reading
    return time.monotonic_ns(), float(image.mean()), len(scene["annotations"])

def score(image, obj, scene, prepared):
    stamp, mean, count = prepared
    # The clock reading, the image's own mean and the box count, all from prepare(), plus the box.
    return float(stamp % 10**9) * 1000 + mean + count * 100 + obj["bbox"][0] / 4
"""


def test_prepare_runs_once_per_image_and_each_box_gets_its_result(tmp_path: Path) -> None:
    outcome = run_hostile(tmp_path, hostile_source(ONCE_PER_IMAGE), level="object", objects=3, images=4)
    by_image: dict[int, list[float]] = {}
    for result in outcome.hostile:
        assert result.kind is None, outcome.describe()
        assert result.score is not None
        by_image.setdefault(result.image_id, []).append(result.score)
    stamps = {}
    for image_id, scores in by_image.items():
        stamps[image_id] = {round((score - (score % 1000)) / 1000) for score in scores}
        assert len(stamps[image_id]) == 1, f"prepare ran more than once for image {image_id}: {scores}"
        rest = sorted(score % 1000 for score in scores)
        mean = 10 + 24 * image_id  # hostile_helpers.brightness: each image is one grey level
        assert rest == pytest.approx([mean + 300 + k for k in range(3)])  # boxes at x = 0, 4, 8
    assert len(set().union(*stamps.values())) == 4, "each image has its own prepare() call"


READ_ONLY = """
import numpy as np

def prepare(image, scene):
    return {"plane": np.zeros(8), "list": [np.ones(2)]}

def score(image, obj, scene, prepared):
    if obj["bbox"][0] == 0:  # the first box tries to leave something for the next one
        prepared["plane"][0] = 99.0
    if obj["bbox"][0] == 4:
        prepared["list"][0][0] = 99.0
    return float(prepared["plane"][0] + prepared["list"][0][0])
"""


def test_what_prepare_returns_cannot_be_written_by_a_call(tmp_path: Path) -> None:
    outcome = run_hostile(tmp_path, hostile_source(READ_ONLY), level="object", objects=3, images=2)
    for result in outcome.hostile:
        box = result.obj
        if box in (0, 1):
            assert result.kind == "exception" and "read-only" in (result.error or ""), outcome.describe()
        else:
            assert result.kind is None and result.score == 1.0, outcome.describe()


RAISES = """
def prepare(image, scene):
    if scene["image"]["id"] == 1:
        raise ValueError("no colour model for this image")
    return 2.0

def score(image, obj, scene, prepared):
    return prepared
"""


def test_a_failing_prepare_fails_that_images_boxes_only(tmp_path: Path) -> None:
    outcome = run_hostile(tmp_path, hostile_source(RAISES), level="object", objects=3, images=3)
    for result in outcome.hostile:
        if result.image_id == 1:
            assert result.kind == "exception", outcome.describe()
            assert "prepare() failed" in (result.error or "") and "no colour model" in (result.error or "")
        else:
            assert result.kind is None and result.score == 2.0, outcome.describe()


SLOW = """
import time

def prepare(image, scene):
    time.sleep(1000)

def score(image, obj, scene, prepared):
    return 1.0
"""


def test_a_slow_prepare_hits_the_soft_timeout(tmp_path: Path) -> None:
    outcome = run_hostile(tmp_path, hostile_source(SLOW), level="object", objects=2, images=2, timeout_s=0.5)
    assert_all_failed(outcome, {"timeout"})
    assert all("prepare() ran past the 0.5 s time limit" in (r.error or "") for r in outcome.hostile)


DODGES_THE_ALARM = """
import signal

def prepare(image, scene):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    while True:
        pass

def score(image, obj, scene, prepared):
    return 1.0
"""


def test_a_prepare_that_ignores_the_soft_limit_is_killed(tmp_path: Path) -> None:
    outcome = run_hostile(
        tmp_path, hostile_source(DODGES_THE_ALARM), level="object", objects=2, images=1, timeout_s=0.5
    )
    assert_all_failed(outcome, {"hard_timeout"})
    assert outcome.report.worker_restarts >= 1


SUBCLASSES = """
import numpy as np

class Endless(list):
    def __iter__(self):  # would hang whoever walks it, outside any call's time limit
        while True:
            pass

class Sticky(np.ndarray):
    def setflags(self, *args, **kwargs):  # would keep the array writable
        pass

def prepare(image, scene):
    sticky = np.zeros(4).view(Sticky)
    return {"endless": Endless([np.zeros(2)]), "sticky": sticky}

def score(image, obj, scene, prepared):
    try:
        prepared["sticky"][0] = 1.0
    except ValueError:
        return 2.0  # numpy's own setflags made it read-only
    return 1.0
"""


def test_what_prepare_returns_is_frozen_without_running_its_code(tmp_path: Path) -> None:
    # Walking a list subclass would run its __iter__ outside the call's time limit, so it is left alone;
    # an ndarray subclass is frozen by numpy's own setflags, not by the one it defines.
    outcome = run_hostile(tmp_path, hostile_source(SUBCLASSES), level="object", objects=2, images=2, timeout_s=1.0)
    assert [result.score for result in outcome.hostile] == [2.0] * 4, outcome.describe()
    assert outcome.elapsed_s < 20, outcome.elapsed_s
