"""`metricsmith doctor` also says which model backends this machine offers, without loading a model."""

from __future__ import annotations

import importlib.util

import pytest

from agent.cli import doctor
from agent.cli.doctor import model_backends


def test_an_endpoint_is_named_and_its_key_never_shown() -> None:
    lines = model_backends({"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1", "OPENAI_API_KEY": "sk-secret-123456789"})
    openai = next(line for line in lines if line.startswith("openai:"))
    assert "http://127.0.0.1:11434/v1 (API key set)" in openai
    assert all("sk-secret" not in line for line in lines)


def test_without_an_endpoint_the_local_model_is_the_default() -> None:
    lines = model_backends({})
    assert "openai: no OPENAI_BASE_URL or OPENAI_API_KEY; the local model is the default" in lines
    local = next(line for line in lines if line.startswith("local:"))
    if importlib.util.find_spec("llama_cpp") is None:
        assert "pip install 'metricsmith[local]'" in local
    else:
        assert local.startswith("local: llama-cpp-python ") and "Gemma 3 270M weights" in local
        assert "held to a grammar" in local


def test_the_amx_workaround_is_named_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python: pip install 'metricsmith[local]'")
    for has_amx in (True, False):
        monkeypatch.setattr(doctor, "cpu_has_amx", lambda has_amx=has_amx: has_amx)
        local = next(line for line in model_backends({}) if line.startswith("local:"))
        assert ("without llama.cpp's AMX kernels" in local) is has_amx


def test_a_password_or_key_in_the_endpoints_url_is_never_shown() -> None:
    environ = {"OPENAI_BASE_URL": "http://admin:pw-S3cret@127.0.0.1:8000/v1?api_key=Q5ecret"}
    (line,) = [line for line in model_backends(environ) if line.startswith("openai:")]
    assert "S3cret" not in line and "Q5ecret" not in line
    assert line.startswith("openai: http://[REDACTED]@127.0.0.1:8000/v1?api_key=[REDACTED]")
