"""Prometheus metrics of a consumer process, served on `--metrics-port`.

Names follow Prometheus conventions (`webr_` prefix, `_total` counters, seconds). The LLM client keeps plain
counters of its own (`ClientStats`); `LLMStatsCollector` exports them at scrape time, so the client stays free
of any metrics library and a scrape always sees one consistent snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from consumers.llm.types import LATENCY_BUCKETS_S
from consumers.outcomes import Outcome, PairRow

_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class ConsumerMetrics:
    """Every metric the Kafka runtime updates, registered on one registry (a private one in tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        r = registry
        self.docs_in = Counter("webr_documents_in_total", "Kafka records received", ["partition"], registry=r)
        self.docs_out = Counter(
            "webr_documents_out_total", "Outcomes written, by kind (row or rejected)", ["outcome"], registry=r
        )
        self.rejected = Counter("webr_rejected_total", "Rejected documents by stage and reason",
                                ["stage", "reason"], registry=r)
        self.doc_tokens = Counter("webr_document_tokens_total", "Tokens of written outcomes", ["kind"], registry=r)
        self.doc_cost = Counter("webr_document_cost_usd_total", "Cost of written outcomes (USD)", registry=r)
        self.doc_latency = Histogram("webr_document_seconds", "Time to process one document (all its calls)",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("webr_documents_in_flight", "Documents being processed now", registry=r)
        self.backlog = Gauge("webr_documents_backlog", "Fetched records waiting for a slot", registry=r)
        self.lag = Gauge("webr_consumer_lag", "High watermark minus the next offset to process", ["partition"],
                         registry=r)
        self.committed = Gauge("webr_committed_offset", "Last committed offset", ["partition"], registry=r)
        self.commits = Counter("webr_commits_total", "Offset commits by result", ["result"], registry=r)
        self.paused = Gauge("webr_partitions_paused", "Partitions paused for backpressure", registry=r)
        self.assigned = Gauge("webr_partitions_assigned", "Partitions owned by this process", registry=r)
        self.files = Counter("webr_files_written_total", "Output ranges made durable", registry=r)
        self.bytes = Counter("webr_bytes_written_total", "Bytes of Parquet written", registry=r)
        self.dead_letters = Counter("webr_dead_letters_total", "Records sent to the dead-letter topic", registry=r)
        self.rebalances = Counter("webr_rebalances_total", "Partition revocations, by kind", ["kind"], registry=r)

    def outcome(self, outcome: Outcome) -> None:
        """Count one outcome as it is written (in offset order, after dedup)."""
        if isinstance(outcome, PairRow):
            self.docs_out.labels("row").inc()
        else:
            self.docs_out.labels("rejected").inc()
            self.rejected.labels(outcome.stage, outcome.reason).inc()
        usage = outcome.usage
        self.doc_tokens.labels("prompt").inc(usage.prompt_tokens)
        self.doc_tokens.labels("completion").inc(usage.completion_tokens)
        self.doc_tokens.labels("cached").inc(usage.cached_tokens)
        if usage.cost_usd:
            self.doc_cost.inc(usage.cost_usd)

    def file_written(self, rows_bytes: int) -> None:
        self.files.inc()
        self.bytes.inc(rows_bytes)


class LLMStatsCollector(Collector):
    """Exports an LLM client's `ClientStats` (calls by status, tokens, retries, 429s, latency) at scrape time."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        stats = self._stats()
        if stats is None:
            return
        calls = CounterMetricFamily("webr_llm_calls", "LLM calls by final status", labels=["status"])
        calls.add_metric(["ok"], stats.calls_ok)
        for kind, count in sorted(stats.failures_by_kind.items()):
            calls.add_metric([str(kind)], count)
        yield calls
        tokens = CounterMetricFamily("webr_llm_tokens", "Tokens of successful LLM calls", labels=["kind"])
        for kind in ("prompt", "completion", "cached"):
            tokens.add_metric([kind], getattr(stats, f"{kind}_tokens"))
        yield tokens
        yield CounterMetricFamily("webr_llm_attempts", "HTTP attempts", value=stats.attempts)
        yield CounterMetricFamily("webr_llm_retries", "Retried attempts", value=stats.retries)
        yield CounterMetricFamily("webr_llm_rate_limited", "429 answers", value=stats.rate_limited_429)
        yield CounterMetricFamily("webr_llm_cost_usd", "Cost of LLM calls (USD)", value=stats.cost_usd)
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), stats.latency_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        yield HistogramMetricFamily(
            "webr_llm_latency_seconds", "HTTP round trip of successful LLM requests",
            buckets=buckets, sum_value=stats.latency_s_sum,
        )
        yield GaugeMetricFamily("webr_llm_in_flight", "LLM requests in flight", value=stats.in_flight)
        breaker = stats.breaker
        yield GaugeMetricFamily(
            "webr_llm_endpoint_down", "1 while the endpoint's circuit breaker holds calls", value=int(breaker.open)
        )
        yield CounterMetricFamily("webr_llm_endpoint_outages", "Times the circuit breaker opened", value=breaker.opened)
        yield CounterMetricFamily(
            "webr_llm_endpoint_outage_seconds", "Length of ended outages (breaker open to closed)",
            value=breaker.outage_s,
        )
        yield CounterMetricFamily(
            "webr_llm_held_seconds", "Attempt time spent waiting for a failing endpoint", value=stats.held_s
        )
        yield GaugeMetricFamily(
            "webr_llm_rate_limit_scale", "Share of the configured rate limits in use, adapted from the server",
            value=stats.rate_scale,
        )


def llm_stats_of(processor: object) -> Callable[[], Any]:
    """A getter for the stats of the processor's LLM client (None when it keeps none)."""
    return lambda: getattr(getattr(processor, "llm", None), "stats", None)


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Start the /metrics HTTP endpoint on a daemon thread (port 0 picks a free port, for tests)."""
    start_http_server(port, registry=registry)
