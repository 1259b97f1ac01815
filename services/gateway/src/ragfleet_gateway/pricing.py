"""``PriceTable``: what an answer cost, priced per model attempt from the configured price table
(``GatewaySettings.prices`` / ``prices_file``; ``ModelPrice`` says how a self-hosted model's
price follows from an hourly price and its measured throughput)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ragfleet_gateway.domain import ModelAttempt
from ragfleet_gateway.settings import DEFAULT_PRICE_KEY, GatewaySettings, ModelPrice


@dataclass(frozen=True)
class TokenPrice:
    """USD per million prompt tokens and per million completion tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        if self.input_per_million < 0 or self.output_per_million < 0:
            raise ValueError(f"prices must not be negative; got {self}")

    @classmethod
    def of(cls, price: ModelPrice) -> TokenPrice:
        return cls(*price.per_million())

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        ) / 1e6


class PriceTable:
    """Prices by model name; the generator's default model ("" in an attempt) is priced by the
    name the generator reported for it when the table has that name, else as
    ``DEFAULT_PRICE_KEY``."""

    def __init__(self, prices: Mapping[str, TokenPrice]) -> None:
        if not prices:
            raise ValueError("a price table needs at least one price")
        self._prices = dict(prices)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> PriceTable | None:
        """The configured table; None when none is configured (answers then carry no cost)."""
        table = settings.price_table()
        return cls({name: TokenPrice.of(p) for name, p in table.items()}) if table else None

    def price(self, attempt: ModelAttempt, default_model: str = "") -> ModelAttempt:
        """``attempt`` with its cost; a model the table does not know (a name a gateway without
        a chain passed through) stays without one. ``default_model``: the name the generator
        reported for its default model."""
        name = attempt.model or (default_model if default_model in self._prices else "")
        price = self._prices.get(name or DEFAULT_PRICE_KEY)
        if price is None:
            return attempt
        cost = price.cost(attempt.prompt_tokens, attempt.completion_tokens)
        return dataclasses.replace(attempt, cost_usd=cost)

    def price_all(
        self, attempts: Sequence[ModelAttempt], default_model: str = ""
    ) -> tuple[list[ModelAttempt], float]:
        """Every attempt priced, and their total cost."""
        priced = [self.price(a, default_model) for a in attempts]
        return priced, sum(a.cost_usd or 0.0 for a in priced)
