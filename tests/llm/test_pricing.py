"""Prices from the table, a price table file merged over it, overrides from the settings, unknown costs as unknown."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from consumers.llm.pricing import Prices, load_price_table, prices_for, table_prices
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


def _table(tmp_path: Path, text: str, suffix: str = ".toml") -> Path:
    path = tmp_path / f"prices{suffix}"
    path.write_text(text)
    return path


def test_price_table_file_merges_over_the_built_in_prices(tmp_path: Path) -> None:
    path = _table(
        tmp_path, '["gpt-4o-mini"]\noutput = 0.5\n\n["gpt-6"]\ninput = 3.0\ncached_input = 0.3\noutput = 12.0\n'
    )
    openai = LLMSettings(api_key="sk-x", model="gpt-4o-mini", price_table=path)
    assert prices_for(openai) == Prices(0.15, 0.075, 0.5)  # one field replaced, the rest kept
    newer = openai.model_copy(update={"model": "gpt-6-2027-01-01"})
    assert prices_for(newer) == Prices(3.0, 0.3, 12.0)  # a new family, snapshots included
    assert prices_for(openai.model_copy(update={"model": "gpt-4o"})) == Prices(2.50, 1.25, 10.00)  # untouched


def test_price_table_prices_a_self_hosted_model_with_its_cache_discount(tmp_path: Path) -> None:
    path = _table(
        tmp_path, '{"Qwen/Qwen2.5-7B-Instruct": {"input": 0.02, "cached_input": 0.002, "output": 0.06}}', ".json"
    )
    vllm = LLMSettings(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct", price_table=path)
    prices = prices_for(vllm)
    assert prices == Prices(0.02, 0.002, 0.06)
    # a million prompt tokens of which 600k served from the prefix cache, plus 100k completion tokens
    assert prices.cost(1_000_000, 100_000, 600_000) == pytest.approx(
        (400_000 * 0.02 + 600_000 * 0.002 + 100_000 * 0.06) / 1e6
    )
    # the built-in OpenAI prices never apply to a self-hosted server, even under an OpenAI model name
    assert prices_for(vllm.model_copy(update={"model": "gpt-4o-mini"})) is None


def test_new_model_without_a_cached_price_gets_no_discount(tmp_path: Path) -> None:
    path = _table(tmp_path, '["local-8b"]\ninput = 0.1\noutput = 0.2\n')
    assert load_price_table(path, {})["local-8b"] == Prices(0.1, 0.1, 0.2)


def test_settings_overrides_apply_over_the_file(tmp_path: Path) -> None:
    path = _table(tmp_path, '["local-8b"]\ninput = 0.1\noutput = 0.2\n')
    settings = LLMSettings(
        base_url="http://127.0.0.1:8000/v1", model="local-8b", price_table=path, price_cached_input_per_mtok=0.01
    )
    assert prices_for(settings) == Prices(0.1, 0.01, 0.2)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('["local-8b"]\ninput = 0.1\n', "give input and output"),
        ('["local-8b"]\ninput = 0.1\noutput = 0.2\ncache = 0.0\n', "unknown fields"),
        ('["local-8b"]\ninput = -1\noutput = 0.2\n', "must be a price"),
        ('["local-8b"]\ninput = "cheap"\noutput = 0.2\n', "must be a price"),
        ("local-8b = 0.1\n", "must map"),
        ("[local", "price table"),
    ],
    ids=["missing-output", "unknown-field", "negative", "not-a-number", "not-a-table", "not-toml"],
)
def test_invalid_price_table_is_refused_with_the_settings(tmp_path: Path, text: str, error: str) -> None:
    path = _table(tmp_path, text)
    with pytest.raises(ValidationError, match=error):
        LLMSettings(base_url="http://127.0.0.1:8000/v1", model="local-8b", price_table=path)


def test_missing_price_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="price table"):
        LLMSettings(base_url="http://127.0.0.1:8000/v1", price_table=tmp_path / "nowhere.toml")
