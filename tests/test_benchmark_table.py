"""The README's label-error table is what its documented command prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
