"""Prometheus metrics of a crawl producer, served on `--metrics-port` (what a continuous `--watch` run exposes)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server


class CrawlMetrics:
    """Records by outcome (produced, dropped, unreadable, skipped, recovered) and reason; files completed."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.records = Counter(
            "webr_producer_records_total",
            "Crawl records by outcome and reason",
            ["outcome", "reason"],
            registry=registry,
        )
        self.files = Counter("webr_producer_files_total", "Crawl files produced to the end", registry=registry)
        self.last_poll = Gauge(
            "webr_producer_last_poll_timestamp_seconds", "When --watch last looked for new files", registry=registry
        )

    def record(self, outcome: str, reason: str, count: int = 1) -> None:
        self.records.labels(outcome, reason).inc(count)

    def polled(self) -> None:
        """Called after each directory poll: a stalled watcher shows as a stale timestamp."""
        self.last_poll.set_to_current_time()

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
