"""Where things live: the shipped prompts and metrics (from a wheel or a checkout), and metricsmith's cache."""

from __future__ import annotations

import os
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


def cache_dir() -> Path:
    """metricsmith's own cache (demo datasets a replay or benchmark makes again): $XDG_CACHE_HOME/metricsmith,
    else ~/.cache/metricsmith. Everything in it can be rebuilt; the test suite points it at a temporary folder."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metricsmith"
