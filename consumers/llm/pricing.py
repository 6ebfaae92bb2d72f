"""What a call cost, in USD, from list prices per million tokens (input, cached input, output).

The table holds OpenAI's published standard-tier prices; they change, so every price can be overridden from the
settings. Self-hosted servers (vLLM) and models not in the table cost None unless prices are given: an unknown
cost is reported as unknown rather than as zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.llm.settings import LLMSettings


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens."""

    input: float
    cached_input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """Cached prompt tokens are part of `prompt_tokens` and billed at the cached rate."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return (
            (prompt_tokens - cached) * self.input + cached * self.cached_input + completion_tokens * self.output
        ) / 1e6


# Longest matching prefix wins, so dated snapshots ("gpt-4o-mini-2024-07-18") find their family and
# "gpt-4o-mini" is never priced as "gpt-4o".
PRICE_TABLE: dict[str, Prices] = {
    "gpt-4o-mini": Prices(0.15, 0.075, 0.60),
    "gpt-4o": Prices(2.50, 1.25, 10.00),
    "gpt-4.1-nano": Prices(0.10, 0.025, 0.40),
    "gpt-4.1-mini": Prices(0.40, 0.10, 1.60),
    "gpt-4.1": Prices(2.00, 0.50, 8.00),
    "gpt-5-nano": Prices(0.05, 0.005, 0.40),
    "gpt-5-mini": Prices(0.25, 0.025, 2.00),
    "gpt-5": Prices(1.25, 0.125, 10.00),
    "o4-mini": Prices(1.10, 0.275, 4.40),
    "gpt-3.5-turbo": Prices(0.50, 0.50, 1.50),
}


def table_prices(model: str) -> Prices | None:
    """List prices of `model` (or of the family it is a snapshot of); None if unknown."""
    matches = [name for name in PRICE_TABLE if model == name or model.startswith(name + "-")]
    return PRICE_TABLE[max(matches, key=len)] if matches else None


def prices_for(settings: LLMSettings) -> Prices | None:
    """Prices for the configured model and server, with the settings' overrides applied.

    Overrides replace single fields of the table's entry; without an entry (unknown model or a self-hosted
    server) input and output prices must both be given, and cached input defaults to the input price.
    """
    base = table_prices(settings.model) if settings.is_openai else None
    input_price = settings.price_input_per_mtok
    output_price = settings.price_output_per_mtok
    cached_price = settings.price_cached_input_per_mtok
    if base is None:
        if input_price is None or output_price is None:
            return None
        return Prices(input_price, input_price if cached_price is None else cached_price, output_price)
    return Prices(
        base.input if input_price is None else input_price,
        base.cached_input if cached_price is None else cached_price,
        base.output if output_price is None else output_price,
    )
