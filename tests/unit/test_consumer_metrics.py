"""The consumer's gauges describe the partitions it owns now, never ones it has lost."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamer.metrics import ConsumerMetrics


def lag_partitions(registry: CollectorRegistry) -> set[str]:
    return {s.labels["partition"] for m in registry.collect() for s in m.samples if s.name == "webr_consumer_lag"}


def test_lag_of_a_partition_that_left_is_removed_not_left_stale() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    for p in (0, 1, 2):
        metrics.lag.labels(str(p)).set(10 * p)

    metrics.partitions_gone([1, 7])  # 7 was never reported: nothing to remove, no error

    assert lag_partitions(registry) == {"0", "2"}
    assert registry.get_sample_value("webr_consumer_lag", {"partition": "2"}) == 20
