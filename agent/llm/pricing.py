"""What a model call cost, in US dollars, for the few OpenAI models whose list prices we know.

The table holds public list prices (standard tier, USD per 1M tokens, as published on
openai.com/api/pricing in 2025). Prices change and local models are free, so an unknown model is
`None` ("we don't know"), never 0.0: a report can then say "cost unknown" instead of lying.

Dated snapshots (`gpt-4o-2024-08-06`) are priced as their family unless the table lists the
snapshot itself, because the early `gpt-4o-2024-05-13` was priced differently.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from agent.llm.model import Usage

__all__ = ["PRICES", "Price", "cost_usd"]


class Price(NamedTuple):
    """USD per 1M tokens."""

    input: float
    output: float


PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-2024-05-13": Price(5.00, 15.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o4-mini": Price(1.10, 4.40),
    "o3-mini": Price(1.10, 4.40),
}

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def cost_usd(model: str, usage: Usage) -> float | None:
    """The list-price cost of one call, or None when the model's price is unknown."""
    price = PRICES.get(model) or PRICES.get(_SNAPSHOT.sub("", model))
    if price is None:
        return None
    return (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1_000_000
