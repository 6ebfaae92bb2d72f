"""The run's summary line and the LLM collector show the prefix-cache hit rate and the cost, known or not."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from consumers.llm.client import ClientStats
from core.outcomes import Rejection, SourceRef, Usage
from streamer.metrics import LLMStatsCollector, RunSummary


def _rejection(i: int, usage: Usage) -> Rejection:
    return Rejection(f"d{i}", "request", "refused_request", "", SourceRef("s", 0, i), datetime.now(UTC), usage=usage)


def test_summary_line_shows_hit_rate_and_cost() -> None:
    summary = RunSummary()
    summary.count(_rejection(0, Usage(2, 1000, 50, 600, 0.0012, 2)))
    summary.count(_rejection(1, Usage(1, 1000, 50, 0, 0.0008, 1)))
    line = summary.render()
    assert summary.prefix_cache_hit_rate == pytest.approx(0.3)
    assert "2000 prompt (30.0% prefix-cache hits) + 100 completion tokens" in line
    assert "$0.0020" in line


def test_summary_line_says_when_the_cost_is_unknown() -> None:
    summary = RunSummary()
    summary.count(_rejection(0, Usage(1, 500, 20, 0, None, 1)))  # a model without a price
    line = summary.render()
    assert "cost unknown" in line and "$" not in line
    assert "(0.0% prefix-cache hits)" in line  # reported, and none: not the same as not reported


def test_summary_before_any_call_has_no_hit_rate() -> None:
    summary = RunSummary()
    assert summary.prefix_cache_hit_rate is None
    assert "prefix-cache" not in summary.render()


def test_llm_collector_exports_the_hit_ratio() -> None:
    stats = ClientStats(prompt_tokens=4000, cached_tokens=2600)
    registry = CollectorRegistry()
    registry.register(LLMStatsCollector(stats))
    assert registry.get_sample_value("webr_llm_prefix_cache_hit_ratio") == pytest.approx(0.65)
    stats.cached_tokens = 3000  # read at scrape time, not copied at registration
    assert registry.get_sample_value("webr_llm_prefix_cache_hit_ratio") == pytest.approx(0.75)
