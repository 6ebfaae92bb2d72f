"""What a run did, counted once, and the Prometheus metrics of a consumer process (served on `--metrics-port`).

Names follow Prometheus conventions (`webr_` prefix, `_total` counters, seconds). Outcomes and files are counted
once, in `RunSummary`, which the progress bar of a file run shows, the end of a file run prints, and
`OutcomesCollector` exports at scrape time. The LLM client keeps plain counters of its own (`ClientStats`);
`LLMStatsCollector` exports them the same way, so the client stays free of any metrics library and a scrape
always sees one consistent snapshot.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from consumers.llm.types import LATENCY_BUCKETS_S
from core.outcomes import Outcome, PairRow

if TYPE_CHECKING:
    from consumers.llm.client import ClientStats

_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


@dataclass
class RunSummary:
    """Outcomes and files written so far (in offset order, after dedup); plain counters, one writer."""

    records: int = 0
    rows: int = 0
    rejections: Tally[tuple[str, str]] = field(default_factory=Tally)
    """Rejected outcomes by (stage, reason)."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    priced: int = 0
    """Outcomes whose cost is known (a model without a price costs None, not zero)."""
    files: int = 0
    bytes_written: int = 0
    started: float = field(default_factory=time.monotonic)

    def count(self, outcome: Outcome) -> None:
        self.records += 1
        if isinstance(outcome, PairRow):
            self.rows += 1
        else:
            self.rejections[(outcome.stage, outcome.reason)] += 1
        usage = outcome.usage
        self.calls += usage.calls
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
        if usage.cost_usd is not None:
            self.cost_usd += usage.cost_usd
            self.priced += 1

    def file_written(self, bytes_written: int) -> None:
        self.files += 1
        self.bytes_written += bytes_written

    @property
    def rejected(self) -> Tally[str]:
        """Rejected outcomes by reason."""
        by_reason: Tally[str] = Tally()
        for (_, reason), n in self.rejections.items():
            by_reason[reason] += n
        return by_reason

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        """Share of prompt tokens the server reported as served from its prefix cache; None before any."""
        return prefix_cache_hit_rate(self.cached_tokens, self.prompt_tokens)

    def render(self) -> str:
        elapsed = time.monotonic() - self.started
        rejected = self.rejected
        reasons = ", ".join(f"{r}={n}" for r, n in rejected.most_common()) or "none"
        hit_rate = self.prefix_cache_hit_rate
        cached = f" ({hit_rate:.1%} prefix-cache hits)" if hit_rate is not None else ""
        cost = f"${self.cost_usd:.4f}" if self.priced else "cost unknown (no price for the model)"
        return (
            f"done: {self.records} records -> {self.rows} rows, {rejected.total()} rejected ({reasons}); "
            f"{self.calls} LLM calls, {self.prompt_tokens} prompt{cached} + {self.completion_tokens} completion "
            f"tokens, {cost}; {self.files} files; {elapsed:.1f}s"
        )


def prefix_cache_hit_rate(cached_tokens: int, prompt_tokens: int) -> float | None:
    """Cached / prompt tokens (OpenAI's `cached_tokens`; vLLM reports them with --enable-prompt-tokens-details)."""
    return cached_tokens / prompt_tokens if prompt_tokens else None


class ConsumerMetrics:
    """Every metric the pipeline and the Kafka runtime update, registered on one registry (a private one in
    tests and file runs). Outcomes and files go to `summary`, exported by `OutcomesCollector`."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.summary = RunSummary()
        r = registry
        r.register(OutcomesCollector(self.summary))
        self.docs_in = Counter("webr_documents_in_total", "Kafka records received", ["partition"], registry=r)
        self.doc_latency = Histogram(
            "webr_document_seconds",
            "Time to process one document (all its calls)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("webr_documents_in_flight", "Documents being processed now", registry=r)
        self.backlog = Gauge("webr_documents_backlog", "Fetched records waiting for a slot", registry=r)
        self.lag = Gauge(
            "webr_consumer_lag", "High watermark minus the next offset to process", ["partition"], registry=r
        )
        self.committed = Gauge("webr_committed_offset", "Last committed offset", ["partition"], registry=r)
        self.commits = Counter("webr_commits_total", "Offset commits by result", ["result"], registry=r)
        self.paused = Gauge("webr_partitions_paused", "Partitions paused for backpressure", registry=r)
        self.assigned = Gauge("webr_partitions_assigned", "Partitions owned by this process", registry=r)
        self.dead_letters = Counter("webr_dead_letters_total", "Records sent to the dead-letter topic", registry=r)
        self.rebalances = Counter("webr_rebalances_total", "Partition revocations, by kind", ["kind"], registry=r)

    def outcome(self, outcome: Outcome) -> None:
        """Count one outcome as it is written (in offset order, after dedup)."""
        self.summary.count(outcome)

    def partitions_gone(self, partitions: Iterable[int]) -> None:
        """Drop the lag and committed offset of partitions this member no longer owns, so neither gauge shows a
        stale value (their new owner exports them)."""
        for p in partitions:
            for gauge in (self.lag, self.committed):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(p))

    def file_written(self, bytes_written: int) -> None:
        self.summary.file_written(bytes_written)


class OutcomesCollector(Collector):
    """Exports a `RunSummary` at scrape time: outcomes by kind, rejections, their tokens and cost, files."""

    def __init__(self, summary: RunSummary) -> None:
        self._summary = summary

    def collect(self) -> Iterator[CounterMetricFamily]:
        s = self._summary
        out = CounterMetricFamily(
            "webr_documents_out", "Outcomes written, by kind (row or rejected)", labels=["outcome"]
        )
        out.add_metric(["row"], s.rows)
        out.add_metric(["rejected"], s.records - s.rows)
        yield out
        rejected = CounterMetricFamily(
            "webr_rejected", "Rejected documents by stage and reason", labels=["stage", "reason"]
        )
        for (stage, reason), n in sorted(dict.copy(s.rejections).items()):  # copied at once: the loop writes
            rejected.add_metric([stage, reason], n)
        yield rejected
        tokens = CounterMetricFamily("webr_document_tokens", "Tokens of written outcomes", labels=["kind"])
        for kind, n in (("prompt", s.prompt_tokens), ("completion", s.completion_tokens), ("cached", s.cached_tokens)):
            tokens.add_metric([kind], n)
        yield tokens
        yield CounterMetricFamily("webr_document_cost_usd", "Cost of written outcomes (USD)", value=s.cost_usd)
        yield CounterMetricFamily("webr_files_written", "Output ranges made durable", value=s.files)
        yield CounterMetricFamily("webr_bytes_written", "Bytes of Parquet written", value=s.bytes_written)


class LLMStatsCollector(Collector):
    """Exports an LLM client's `ClientStats` (calls by status, tokens, retries, 429s, latency) at scrape time."""

    def __init__(self, stats: ClientStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        stats = self._stats
        calls = CounterMetricFamily("webr_llm_calls", "LLM calls by final status", labels=["status"])
        calls.add_metric(["ok"], stats.calls_ok)
        for kind, count in sorted(stats.failures_by_kind.items()):
            calls.add_metric([str(kind)], count)
        yield calls
        tokens = CounterMetricFamily("webr_llm_tokens", "Tokens of successful LLM calls", labels=["kind"])
        for kind, n in (
            ("prompt", stats.prompt_tokens),
            ("completion", stats.completion_tokens),
            ("cached", stats.cached_tokens),
        ):
            tokens.add_metric([kind], n)
        yield tokens
        yield CounterMetricFamily("webr_llm_attempts", "HTTP attempts", value=stats.attempts)
        yield CounterMetricFamily("webr_llm_retries", "Retried attempts", value=stats.retries)
        yield CounterMetricFamily("webr_llm_rate_limited", "429 answers", value=stats.rate_limited_429)
        yield CounterMetricFamily("webr_llm_cost_usd", "Cost of LLM calls (USD)", value=stats.cost_usd)
        yield GaugeMetricFamily(
            "webr_llm_prefix_cache_hit_ratio",
            "Cached / prompt tokens of successful LLM calls since start (0 before any, or when not reported)",
            value=prefix_cache_hit_rate(stats.cached_tokens, stats.prompt_tokens) or 0.0,
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), stats.latency_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        yield HistogramMetricFamily(
            "webr_llm_latency_seconds",
            "HTTP round trip of successful LLM requests",
            buckets=buckets,
            sum_value=stats.latency_s_sum,
        )
        yield GaugeMetricFamily("webr_llm_in_flight", "LLM requests in flight", value=stats.in_flight)
        pool = stats.pool
        yield GaugeMetricFamily(
            "webr_llm_endpoint_down",
            "1 while every replica is out of rotation and calls wait",
            value=int(bool(pool.replicas) and pool.all_down),
        )
        yield CounterMetricFamily(
            "webr_llm_endpoint_outages",
            "Times a replica's circuit breaker opened",
            value=sum(r.breaker.opened for r in pool.replicas),
        )
        yield CounterMetricFamily(
            "webr_llm_endpoint_outage_seconds",
            "Length of ended outages (breaker open to a health check answered), summed over replicas",
            value=sum(r.breaker.outage_s for r in pool.replicas),
        )
        yield CounterMetricFamily(
            "webr_llm_held_seconds", "Attempt time spent waiting while no replica was in rotation", value=pool.held_s
        )
        for name, help_text, value_of in (
            ("webr_llm_replica_in_flight", "LLM requests in flight, by replica", lambda r: r.in_flight),
            ("webr_llm_replica_limit", "Requests in flight a replica may take (adaptive)", lambda r: r.limit),
            ("webr_llm_replica_healthy", "1 while a replica is in rotation", lambda r: int(not r.breaker.open)),
        ):
            gauge = GaugeMetricFamily(name, help_text, labels=["endpoint"])
            for replica in pool.replicas:
                gauge.add_metric([replica.url], value_of(replica))
            yield gauge
        yield GaugeMetricFamily(
            "webr_llm_rate_limit_scale",
            "Share of the configured rate limits in use, adapted from the server",
            value=stats.rate_scale,
        )


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Start the /metrics HTTP endpoint on a daemon thread (port 0 picks a free port, for tests)."""
    start_http_server(port, registry=registry)
