"""cost_usd: list prices for known OpenAI models, None (not 0) for the rest."""

from __future__ import annotations

import pytest

from agent.llm.model import Usage
from agent.llm.pricing import cost_usd


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", (1000 * 0.15 + 2000 * 0.60) / 1e6),
        ("gpt-4o", (1000 * 2.50 + 2000 * 10.00) / 1e6),
        ("gpt-4o-2024-08-06", (1000 * 2.50 + 2000 * 10.00) / 1e6),
        ("gpt-4o-2024-05-13", (1000 * 5.00 + 2000 * 15.00) / 1e6),
        ("gpt-4.1", (1000 * 2.00 + 2000 * 8.00) / 1e6),
        ("gpt-4.1-mini", (1000 * 0.40 + 2000 * 1.60) / 1e6),
        ("o4-mini", (1000 * 1.10 + 2000 * 4.40) / 1e6),
    ],
)
def test_cost_of_known_models(model: str, expected: float) -> None:
    assert cost_usd(model, Usage(prompt_tokens=1000, completion_tokens=2000)) == pytest.approx(expected)


def test_cost_of_an_unknown_model_is_unknown_not_zero() -> None:
    assert cost_usd("gemma-3-270m-q4_k_m.gguf", Usage(prompt_tokens=10, completion_tokens=10)) is None
    assert cost_usd("gpt-4o-mini", Usage(prompt_tokens=0, completion_tokens=0)) == 0.0
