"""The consumer's gauges describe the partitions it owns now, never ones it has lost."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from consumers.llm.client import ClientStats
from consumers.llm.replicas import ReplicaPool
from consumers.llm.settings import LLMSettings
from streamer.metrics import ConsumerMetrics, LLMStatsCollector


def partitions(registry: CollectorRegistry, name: str) -> set[str]:
    return {s.labels["partition"] for m in registry.collect() for s in m.samples if s.name == name}


def test_lag_and_committed_offset_of_a_partition_that_left_are_removed_not_left_stale() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    for p in (0, 1, 2):
        metrics.lag.labels(str(p)).set(10 * p)
        metrics.committed.labels(str(p)).set(100 * p)

    metrics.partitions_gone([1, 7])  # 7 was never reported: nothing to remove, no error

    for name in ("webr_consumer_lag", "webr_committed_offset"):
        assert partitions(registry, name) == {"0", "2"}
    assert registry.get_sample_value("webr_consumer_lag", {"partition": "2"}) == 20
    assert registry.get_sample_value("webr_committed_offset", {"partition": "2"}) == 200


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
