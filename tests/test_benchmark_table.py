"""The README's tables (the demo's label errors, the real-data tiles) are what their documented commands print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.resources import cache_dir

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- label-error-table:start -->", "<!-- label-error-table:end -->"


def _between_markers(text: str) -> str:
    return text[text.index(START) : text.index(END) + len(END)]


@pytest.mark.slow
def test_readme_table_is_reproduced_by_its_command(tmp_path: Path) -> None:
    # A fresh dataset folder: the figures must come from generation, not from a cached copy.
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "label_errors.py"), "--data", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    printed = _between_markers(result.stdout)
    assert "1000 images" in printed
    assert printed == _between_markers((REPO / "README.md").read_text())
    # The goals the README reports as met.
    assert "MISS" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "markers"),
    [
        ((), ("<!-- real-data-table:start -->", "<!-- real-data-table:end -->")),
        (("--held-out",), ("<!-- held-out-table:start -->", "<!-- held-out-table:end -->")),
    ],
)
def test_readme_real_data_tables_are_reproduced_by_their_commands(
    flags: tuple[str, ...], markers: tuple[str, str]
) -> None:
    # The wheel comes from PyPI; without it there is nothing to measure, and the test says so.
    folder = cache_dir() / "real-data"
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), "deepforest==2.1.0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if fetched.returncode != 0:
        pytest.skip(f"the deepforest 2.1.0 wheel can't be downloaded here: {fetched.stderr.strip()[-300:]}")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "real_data.py"), *flags], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    start, end = markers
    printed = result.stdout[result.stdout.index(start) : result.stdout.index(end) + len(end)]
    readme = (REPO / "README.md").read_text()
    assert printed == readme[readme.index(start) : readme.index(end) + len(end)]
