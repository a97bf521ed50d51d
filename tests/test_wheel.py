"""The wheel carries the prompts and built-in metrics: build it, install it in a fresh venv, use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.metrics.contract import list_builtin_metrics

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the built wheel (and its dependencies) installed. Returns its bin dir."""
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(REPO)], cwd=work)
    (wheel,) = (work / "dist").glob("metricsmith-*.whl")
    _run([sys.executable, "-m", "venv", str(work / "venv")], cwd=work)
    bin_dir = work / "venv" / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=work)
    return bin_dir


def test_wheel_lists_prompts_and_metrics(tmp_path: Path) -> None:
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)], cwd=tmp_path)
    (wheel,) = tmp_path.glob("metricsmith-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "agent/prompts/CONTRACT.md" in names
    shipped = {Path(name).name for name in names if name.startswith("agent/prompts/metrics/")}
    in_repo = {path.name for path in (REPO / "prompts" / "metrics").glob("*.py")}
    assert in_repo and in_repo <= shipped
    assert "sandbox/worker.py" in names
    assert "agent/evaluation/templates/report.html.j2" in names  # `metricsmith report` renders it


def test_installed_wheel_runs_builtin_metrics_without_the_checkout(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "python")
    where = _run([python, "-c", "import agent, sandbox; print(agent.__file__); print(sandbox.__file__)"], cwd=tmp_path)
    assert str(REPO) not in where.stdout, "the venv must use the wheel, not the checkout"

    listed = json.loads(_run([str(installed / "metricsmith"), "library", "list", "--json"], cwd=tmp_path).stdout)
    names = {item["name"] for item in listed}
    # Every shipped file is listed: as itself, or (a learned file listing ERRORS) as one metric per error type.
    assert {spec.name for spec in list_builtin_metrics()} == names
    assert {path.stem for path in (REPO / "prompts" / "metrics").glob("*.py")} == {
        name.split("_")[0] if name.startswith("learned_") else name for name in names
    }

    _run([str(installed / "metricsmith"), "demo-data", str(tmp_path / "demo"), "--images", "6"], cwd=tmp_path)
    out = tmp_path / "scores.csv"
    _run(
        [str(installed / "metricsmith"), "score", "--annotations", str(tmp_path / "demo" / "annotations.json"),
         "--metric", "builtin:brightness", "--metric", "builtin:border_closeness", "--out", str(out)],
        cwd=tmp_path,
    )  # fmt: skip
    lines = out.read_text().splitlines()
    assert lines[0].startswith("metric,level,image_id,annotation_id,score")
    assert sum(line.startswith("brightness,image,") for line in lines) == 6
    assert any(line.startswith("border_closeness,object,") for line in lines)

    report = tmp_path / "report.html"  # the HTML template ships in the wheel too
    _run([str(installed / "metricsmith"), "report", "--annotations", str(tmp_path / "demo" / "annotations.json"),
          "--scores", str(out), "--out", str(report)], cwd=tmp_path)  # fmt: skip
    assert 'id="metric-brightness"' in report.read_text()
