"""The README's two opening commands stay true: CI runs the documented test command verbatim."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def opening_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)[:2]


def test_readme_opens_with_main_job_then_tests() -> None:
    main_job, tests = opening_commands()
    assert "pip install '.[local]'" in main_job and "metricsmith batch examples/demo.toml" in main_job
    assert (REPO / "examples" / "demo.toml").is_file()
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, tests = opening_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_what_the_quick_start_writes_stays_out_of_git() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (an sdist): nothing to ignore")
    written = ["demo/annotations.json", "runs/batch-1/manifest.json", "metricsmith-library/name/v1/metric.py"]
    result = subprocess.run(["git", "check-ignore", *written], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == written
