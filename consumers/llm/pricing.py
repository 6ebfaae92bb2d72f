"""What a call cost, in USD, from list prices per million tokens (input, cached input, output).

The built-in table holds OpenAI's published standard-tier prices. They change, and self-hosted models have a
price only their owner knows (GPU hours per million tokens), so a price table file (`price_table` in the
settings: TOML or JSON, model -> input / cached_input / output) is merged over it, and single prices can be
overridden from the settings. The built-in entries apply to OpenAI only; the file's apply to any server. A model
without a price costs None: an unknown cost is reported as unknown rather than as zero.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def table_prices(model: str, table: dict[str, Prices] = PRICE_TABLE) -> Prices | None:
    """Prices of `model` (or of the family it is a snapshot of) in `table`; None if unknown."""
    matches = [name for name in table if model == name or model.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None


def load_price_table(path: Path, base: dict[str, Prices] = PRICE_TABLE) -> dict[str, Prices]:
    """The file's entries merged over `base`: `{model: {input, cached_input, output}}` in USD per million tokens.

    An entry for a model of `base` may give single fields (the rest are kept); a new model needs `input` and
    `output`, and its `cached_input` defaults to `input` (no discount unless one is stated). Raises ValueError
    for an unreadable file, unknown fields or negative prices.
    """
    try:
        text = path.read_text()
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"price table {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"price table {path}: expected a table of models")
    table = dict(base)
    for model, entry in data.items():
        table[model] = _entry(path, model, entry, base.get(model))
    return table


_FIELDS = tuple(f.name for f in fields(Prices))


def _entry(path: Path, model: str, entry: object, known: Prices | None) -> Prices:
    if not isinstance(entry, dict):
        raise ValueError(f"price table {path}: {model!r} must map {', '.join(_FIELDS)} to prices")
    unknown = set(entry) - set(_FIELDS)
    if unknown:
        raise ValueError(f"price table {path}: {model!r} has unknown fields {sorted(unknown)}")
    for name, value in entry.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"price table {path}: {model}.{name} must be a price >= 0, not {value!r}")
    if known is not None:
        return replace(known, **{name: float(value) for name, value in entry.items()})
    if "input" not in entry or "output" not in entry:
        raise ValueError(f"price table {path}: {model!r} is not in the built-in table: give input and output")
    return Prices(float(entry["input"]), float(entry.get("cached_input", entry["input"])), float(entry["output"]))


def prices_for(settings: LLMSettings) -> Prices | None:
    """Prices for the configured model and server, with the settings' overrides applied.

    The table is the built-in one for OpenAI (none for other servers) with the price table file merged over
    it. Overrides replace single fields of the entry found; without an entry input and output prices must both
    be given, and cached input defaults to the input price.
    """
    table = PRICE_TABLE if settings.is_openai else {}
    if settings.price_table is not None:
        table = load_price_table(settings.price_table, table)
    base = table_prices(settings.model, table)
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
