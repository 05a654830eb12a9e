"""What a judge request costs: token usage read from each response, priced with a per-model table."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from engine.errors import ConfigError


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens. Output includes reasoning tokens (GPT-5 bills them as output)."""

    input_per_m: float
    cached_input_per_m: float
    output_per_m: float

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0:  # also rejects NaN
                raise ConfigError(f"price {name} must be >= 0 USD per 1M tokens, got {value!r}")

    def cost(self, tokens_in: int, tokens_cached: int, tokens_out: int) -> float:
        """`tokens_in` counts every prompt token, cached ones included (as OpenAI's usage does)."""
        uncached = max(0, tokens_in - tokens_cached)
        return (
            uncached * self.input_per_m + tokens_cached * self.cached_input_per_m + tokens_out * self.output_per_m
        ) / 1e6

    def batch(self) -> Prices:
        """The Batch API's prices: BATCH_DISCOUNT of every live price (input, cached input and output)."""
        return Prices(self.input_per_m * BATCH_DISCOUNT, self.cached_input_per_m * BATCH_DISCOUNT,
                      self.output_per_m * BATCH_DISCOUNT)


BATCH_DISCOUNT = 0.5  # the Batch API bills half the live price (NOTES: OpenAI SDK 3.x and GPT-5)


FREE = Prices(0.0, 0.0, 0.0)

# Published list prices (standard tier, USD per 1M tokens). gpt-5 is checked in the project notes;
# mini and nano are OpenAI's launch prices. Override any of them with --price-in/--price-cached-in/--price-out.
PRICE_TABLE: dict[str, Prices] = {
    "gpt-5": Prices(1.25, 0.125, 10.0),
    "gpt-5-mini": Prices(0.25, 0.025, 2.0),
    "gpt-5-nano": Prices(0.05, 0.005, 0.40),
}

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # gpt-5-2025-08-07 is priced as gpt-5


def base_model(model: str) -> str:
    """The model a dated snapshot belongs to (gpt-5-2025-08-07 -> gpt-5); other names as they are."""
    return _SNAPSHOT.sub("", model)


def known_prices(model: str) -> Prices | None:
    return PRICE_TABLE.get(model) or PRICE_TABLE.get(base_model(model))


@dataclass
class RowUsage:
    """Tokens and dollars one row spent over all its requests (retries and swap check included)."""

    requests: int = 0  # attempts, 429s and 5xx included
    answered: int = 0  # requests that came back with an answer (billed), usable or not
    tokens_in: int = 0
    tokens_cached: int = 0
    tokens_out: int = 0
    tokens_reasoning: int = 0
    cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost_usd"] = round(self.cost_usd, 8)
        return d
