"""Prices from the table, overrides from the settings, and unknown costs reported as unknown."""

from __future__ import annotations

import pytest

from consumers.llm.pricing import Prices, prices_for, table_prices
from consumers.llm.settings import LLMSettings


def test_gpt_4o_mini_list_prices() -> None:
    prices = prices_for(LLMSettings(api_key="sk-x", model="gpt-4o-mini"))
    assert prices == Prices(0.15, 0.075, 0.60)
    # one million prompt tokens of which half cached, plus one million completion tokens
    assert prices.cost(1_000_000, 1_000_000, 500_000) == pytest.approx(0.075 + 0.0375 + 0.60)


def test_snapshots_find_their_family_and_mini_is_not_4o() -> None:
    assert table_prices("gpt-4o-mini-2024-07-18") == table_prices("gpt-4o-mini")
    assert table_prices("gpt-4o-2024-08-06") == Prices(2.50, 1.25, 10.00)
    assert table_prices("gpt-4.1-mini") != table_prices("gpt-4.1")
    assert table_prices("llama-3-70b") is None


def test_overrides_replace_single_fields() -> None:
    settings = LLMSettings(api_key="sk-x", model="gpt-4o-mini", price_output_per_mtok=0.5)
    assert prices_for(settings) == Prices(0.15, 0.075, 0.5)


def test_self_hosted_costs_nothing_known_unless_priced() -> None:
    vllm = LLMSettings(base_url="http://127.0.0.1:8000/v1", model="gpt-4o-mini")
    assert prices_for(vllm) is None
    priced = vllm.model_copy(update={"price_input_per_mtok": 0.2, "price_output_per_mtok": 0.4})
    assert prices_for(priced) == Prices(0.2, 0.2, 0.4)


def test_unknown_openai_model_needs_both_prices() -> None:
    settings = LLMSettings(api_key="sk-x", model="gpt-99", price_input_per_mtok=1.0)
    assert prices_for(settings) is None


def test_cached_tokens_never_exceed_the_prompt() -> None:
    assert Prices(1.0, 0.5, 2.0).cost(100, 0, 1_000) == pytest.approx(100 * 0.5 / 1e6)
