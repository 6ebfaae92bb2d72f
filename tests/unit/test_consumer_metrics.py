"""The consumer's gauges describe the partitions it owns now, never ones it has lost."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from consumers.llm.client import ClientStats
from consumers.llm.replicas import ReplicaPool
from consumers.llm.settings import LLMSettings
from streamer.metrics import ConsumerMetrics, LLMStatsCollector


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


def test_llm_gauges_by_replica_and_endpoint_down_only_when_all_are_out() -> None:
    pool = ReplicaPool(LLMSettings(base_url="http://vllm-0:8000/v1,http://vllm-1:8000/v1", max_concurrency=16))
    a, b = pool.replicas
    stats = ClientStats(pool=pool.stats)
    registry = CollectorRegistry()
    registry.register(LLMStatsCollector(stats))
    for _ in range(3):
        a.breaker.record(down=True, opened=0)
    a.stats.in_flight, b.stats.in_flight = 0, 5

    def value(name: str, endpoint: str | None = None) -> float | None:
        return registry.get_sample_value(name, {"endpoint": endpoint} if endpoint else {})

    assert value("webr_llm_replica_healthy", a.url) == 0 and value("webr_llm_replica_healthy", b.url) == 1
    assert value("webr_llm_replica_in_flight", b.url) == 5
    assert value("webr_llm_replica_limit", b.url) == 16
    assert value("webr_llm_endpoint_down") == 0
    assert value("webr_llm_endpoint_outages_total") == 1
    for _ in range(3):
        b.breaker.record(down=True, opened=0)
    assert value("webr_llm_endpoint_down") == 1
