"""Where the shipped prompts and metrics live, from a wheel or from a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def prompts_dir() -> Path:
    """The prompts folder: `agent/prompts` inside a wheel, `prompts/` at the top of a checkout."""
    installed = _PACKAGE_DIR / "prompts"
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / "prompts"


def builtin_metrics_dir() -> Path:
    """The reference metrics that ship with metricsmith, usable as `builtin:NAME`."""
    return prompts_dir() / "metrics"
