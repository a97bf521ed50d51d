"""Shared machinery for the hostile-metric tests: a tiny dataset, a benign metric, and a runner.

Every hostile test runs one hostile metric next to a benign one (mean brightness) over a few small
images, through the real ScoringEngine, and gets back every CallResult split by metric.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from sandbox.engine import CallResult, RunReport, ScoringEngine
from sandbox.isolation import KERNEL_LAYERS, SandboxConfig, probe_machine
from sandbox.protocol import Call, ImageTask, MetricCode

WIDTH, HEIGHT = 64, 48
BENIGN = 0
HOSTILE = 1

BENIGN_SOURCE = textwrap.dedent(
    """
    NAME = "brightness"
    LEVEL = "image"


    def score(image, scene):
        return float(image.mean())
    """
)

# Isolation configurations: the kernel layers each one turns on; every other layer is forced off.
CONFIGS: dict[str, tuple[str, ...]] = {
    "full": KERNEL_LAYERS,
    "landlock_only": ("landlock",),
    "seccomp_only": ("seccomp",),
    "bwrap_only": ("bwrap",),
    "no_bwrap": ("landlock", "seccomp"),  # what a machine without user namespaces gets
    "unconfined": (),
}


def config_overrides(name: str) -> dict[str, bool]:
    """SandboxConfig keyword arguments for a named configuration: wanted layers True, others False."""
    wanted = CONFIGS[name]
    return {layer: layer in wanted for layer in KERNEL_LAYERS}


def require_layers(name: str) -> None:
    """Skip the test, with the probe's own reason, when the configuration needs a missing layer."""
    machine = probe_machine()
    for layer in CONFIGS[name]:
        availability = machine.get(layer)
        if not availability.available:
            pytest.skip(f"{layer} is unavailable on this machine: {availability.detail}")


def brightness(index: int) -> int:
    """The uniform grey level of image `index`; also the benign metric's expected score."""
    return 10 + 24 * (index % 10)


def make_dataset(folder: Path, count: int, objects: int = 0) -> list[tuple[str, dict]]:
    """Write `count` uniform 64x48 PNGs into `folder`; return (path, scene) for each."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(count):
        path = folder / f"img{index}.png"
        if not path.exists():  # a test may have made the dataset already, to snapshot it
            cv2.imwrite(str(path), np.full((HEIGHT, WIDTH, 3), brightness(index), np.uint8))
        annotations = [
            {
                "id": 100 * index + k,
                "image_id": index,
                "category_id": 1,
                "category": "thing",
                "bbox": [4.0 * k, 4.0, 10.0, 8.0],
                "area": 80.0,
                "iscrowd": 0,
            }
            for k in range(objects)
        ]
        scene = {
            "image": {"id": index, "file_name": path.name, "width": WIDTH, "height": HEIGHT},
            "annotations": annotations,
            "categories": [{"id": 1, "name": "thing"}],
        }
        items.append((str(path), scene))
    return items


# Put in front of every hostile metric: its parameters, and helpers that record each attack step.
# A step that fails is recorded as "denied: <exception>", one that works as "ok: <what it returned>";
# report() raises them all as JSON, so the test reads them back from the call's error text.
PRELUDE = textwrap.dedent(
    """
    import ctypes as _ctypes
    import json as _json
    import os as _os

    LIBC = _ctypes.CDLL(None, use_errno=True)
    LIBC.syscall.restype = _ctypes.c_long
    OUTCOMES = {}


    def attempt(name, action):
        try:
            value = action()
        except Exception as error:
            OUTCOMES[name] = f"denied: {type(error).__name__}: {error}"[:300]
            return None
        OUTCOMES[name] = f"ok: {value!r}"[:300]
        return value


    def libc_call(function, *args):
        _ctypes.set_errno(0)
        result = function(*args)
        if result == -1:
            code = _ctypes.get_errno()
            raise OSError(code, _os.strerror(code))
        return result


    def report():
        text = _json.dumps(OUTCOMES)
        OUTCOMES.clear()
        raise RuntimeError("OUTCOMES=" + text)
    """
)


def hostile_source(body: str, params: dict | None = None) -> str:
    """A metric source: `P = {...}` (the test's parameters), the prelude, then the dedented body."""
    return f"P = {params or {}!r}\n" + PRELUDE + textwrap.dedent(body)


def outcomes_of(result: CallResult) -> dict[str, str]:
    """The attack steps a hostile call recorded with report(); {} when it never got that far."""
    match = re.search(r"OUTCOMES=(\{.*\})\s*$", result.error or "", re.MULTILINE)
    return json.loads(match.group(1)) if match else {}


@dataclass
class Outcome:
    results: list[CallResult]
    report: RunReport
    elapsed_s: float
    images: list[tuple[str, dict]] = field(default_factory=list)
    dataset: Path | None = None

    def of(self, metric: int) -> list[CallResult]:
        return [result for result in self.results if result.metric == metric]

    @property
    def benign(self) -> list[CallResult]:
        return self.of(BENIGN)

    @property
    def hostile(self) -> list[CallResult]:
        return self.of(HOSTILE)

    def text(self) -> str:
        """Everything the run produced that a metric could have smuggled a secret into."""
        parts = [repr(result) for result in self.results]
        parts.extend(f"{name}: {error}" for name, error in self.report.metric_errors.items())
        return "\n".join(parts)

    def hostile_kinds(self) -> set[str | None]:
        return {result.kind for result in self.hostile}

    def describe(self) -> str:
        lines = [f"{r.metric}/{r.image_id}: score={r.score} kind={r.kind} error={r.error!r}" for r in self.results]
        return "\n".join(lines)


def run_hostile(
    tmp_path: Path,
    source: str,
    *,
    config: str = "full",
    level: str = "image",
    images: int = 4,
    hostile_on: Iterable[int] | None = None,
    timeout_s: float = 1.0,
    workers: int = 1,
    objects: int = 0,
    **settings: object,
) -> Outcome:
    """Run the benign metric on every image and the hostile one on `hostile_on` (default: all)."""
    require_layers(config)
    dataset = tmp_path / "dataset"
    items = make_dataset(dataset, images, objects=objects)
    hostile_images = set(range(images) if hostile_on is None else hostile_on)
    metrics = [
        MetricCode(name="brightness", level="image", source=BENIGN_SOURCE, filename="brightness.py"),
        MetricCode(name="hostile", level=level, source=source, filename="hostile.py"),  # type: ignore[arg-type]
    ]
    tasks = []
    for index, (path, scene) in enumerate(items):
        calls = [Call(metric=BENIGN, obj=None)]
        if index in hostile_images:
            if level == "image":
                calls.append(Call(metric=HOSTILE, obj=None))
            else:
                calls.extend(Call(metric=HOSTILE, obj=k) for k in range(len(scene["annotations"])))
        tasks.append(ImageTask(image_id=index, path=path, scene=scene, calls=tuple(calls)))
    sandbox_config = SandboxConfig(
        workers=workers,
        timeout_s=timeout_s,
        read_only_paths=(str(dataset),),
        **config_overrides(config),
        **settings,  # type: ignore[arg-type]
    )
    results: list[CallResult] = []
    started = time.monotonic()
    report = ScoringEngine(sandbox_config).run(metrics, tasks, results.extend)
    elapsed = time.monotonic() - started
    outcome = Outcome(results=results, report=report, elapsed_s=elapsed, images=items, dataset=dataset)
    # Every worker (and bwrap) has the dataset path on its command line: none may outlive the run.
    assert wait_until_gone(str(dataset)) == [], "sandbox processes outlived the run"
    assert_benign_complete(outcome)
    expected_hostile = len(hostile_images) * (1 if level == "image" else objects)
    assert len(outcome.hostile) == expected_hostile, outcome.describe()
    return outcome


def assert_benign_complete(outcome: Outcome) -> None:
    """The run went on: the benign metric scored every image, exactly once, correctly."""
    scores = {result.image_id: result for result in outcome.benign}
    assert len(outcome.benign) == len(outcome.images), outcome.describe()
    for index in range(len(outcome.images)):
        result = scores[index]
        assert result.kind is None and result.error is None, outcome.describe()
        assert result.score == pytest.approx(brightness(index)), outcome.describe()


def assert_all_failed(outcome: Outcome, kinds: set[str]) -> None:
    """Every hostile call failed, with one of the expected kinds."""
    for result in outcome.hostile:
        assert result.score is None and result.kind in kinds, outcome.describe()


def processes_with(marker: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry))
    return found


def wait_until_gone(marker: str, timeout_s: float = 5.0) -> list[int]:
    """Wait for every process whose command line holds `marker` to end; return those still alive."""
    deadline = time.monotonic() + timeout_s
    while (alive := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def process_state(pid: int) -> str | None:
    """The one-letter state of a process, or None when it no longer exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
