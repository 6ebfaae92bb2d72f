"""Rebalances, SIGTERM, an object-store outage and a broker restart: nothing lost, nothing doubled."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.fakeopenai import FakeOpenAI
from devtools.tansu import KafkaTopic, TansuBroker, create_topic, wait_for
from tests.fixtures.s3 import S3Bucket
from tests.kafka.helpers import Consumer, Output, documents, read_output, wait_committed

pytestmark = pytest.mark.timeout(300)


def assert_exactly_once(out: Output, docs: list[tuple[bytes, bytes]]) -> None:
    """Every document once (row or rejection), every offset once."""
    assert max(out.sources.values()) == 1, [s for s, n in out.sources.items() if n > 1]
    assert max(out.doc_ids.values()) == 1, [d for d, n in out.doc_ids.items() if n > 1]
    assert set(out.doc_ids) == {k.decode() for k, _ in docs}
    assert len(out.rows) + len(out.rejected) == len(docs)


def test_two_consumers_rebalance_without_loss_or_doubles(
    kafka_topic: KafkaTopic, fake_llm_factory: Callable[..., FakeOpenAI], tmp_path: Path, consumers: list[Consumer]
) -> None:
    """A second member joins mid-run: the first flushes and commits on revoke, both finish their share."""
    llm = fake_llm_factory(latency_s=(0.05, 0.4))
    docs = documents(150)
    kafka_topic.produce(docs)
    out_uri = str(tmp_path / "out")
    flags = ("--stop-after-idle", "4", "--max-in-flight-docs", "8")
    first = Consumer(kafka_topic, out_uri, llm.url, tmp_path, *flags, name="first")
    second = Consumer(kafka_topic, out_uri, llm.url, tmp_path, *flags, name="second")
    consumers += [first.start(), second]
    wait_committed(kafka_topic, 10)
    second.start()
    assert first.wait() == 0, first.log()[-3000:]
    assert second.wait() == 0, second.log()[-3000:]

    assert_exactly_once(read_output(out_uri, kafka_topic.name), docs)
    assert sum(kafka_topic.committed().values()) == len(docs)  # type: ignore[arg-type]
    revoked = [e for e in first.events() if e["msg"].startswith("revoked partitions [")]
    assert revoked, "the first consumer never gave partitions up"
    assert any(e["msg"].startswith("committed") for e in second.events()), "the second consumer did no work"


def test_sigterm_finishes_in_flight_work_commits_exactly_what_is_written(
    kafka_topic: KafkaTopic, fake_llm_factory: Callable[..., FakeOpenAI], tmp_path: Path, consumers: list[Consumer]
) -> None:
    """After SIGTERM the output is exactly the committed prefix of each partition; a restart finishes the rest."""
    llm = fake_llm_factory(latency_s=(0.05, 0.3))
    docs = documents(120)
    kafka_topic.produce(docs)
    out_uri = str(tmp_path / "out")
    consumer = Consumer(kafka_topic, out_uri, llm.url, tmp_path, "--max-in-flight-docs", "8", "--grace-period-s", "20")
    consumers.append(consumer.start())
    wait_committed(kafka_topic, 10)
    consumer.terminate()
    assert consumer.wait(60) == 0, consumer.log()[-3000:]
    assert "finish in-flight documents" in consumer.log()

    committed = kafka_topic.committed()
    assert sum(c or 0 for c in committed.values()) < len(docs), "stopped too late to test anything"
    out = read_output(out_uri, kafka_topic.name)
    assert set(out.sources) == {(p, o) for p, end in committed.items() for o in range(end or 0)}

    consumer.cmd += ["--stop-after-idle", "3"]
    assert consumer.start().wait() == 0, consumer.log()[-3000:]
    assert_exactly_once(read_output(out_uri, kafka_topic.name), docs)


def test_object_store_outage_is_waited_out_without_committing(
    kafka_topic: KafkaTopic,
    fake_llm_factory: Callable[..., FakeOpenAI],
    s3_bucket: S3Bucket,
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """The S3 server goes away mid-run: writes are retried, nothing is committed meanwhile, the run completes."""
    llm = fake_llm_factory(latency_s=(0.02, 0.2))
    docs = documents(90)
    kafka_topic.produce(docs)
    consumer = Consumer(
        kafka_topic,
        s3_bucket.uri(),
        llm.url,
        tmp_path,
        "--stop-after-idle",
        "4",
        s3_endpoint_url=s3_bucket.endpoint_url,
    )
    consumers.append(consumer.start())
    wait_committed(kafka_topic, 5)
    s3_bucket.server.stop()
    try:
        wait_for(lambda: consumer.log().count("object store write failed") >= 2, 60, "failed writes to be retried")
        during = kafka_topic.committed()
        time.sleep(2)  # the outage itself: it must last while the consumer keeps running
        assert kafka_topic.committed() == during, "committed while the object store was down"
        assert not consumer.exited
    finally:
        s3_bucket.server.start()
    assert consumer.wait() == 0, consumer.log()[-3000:]
    assert_exactly_once(read_output(s3_bucket.uri(), kafka_topic.name, s3_bucket.endpoint_url), docs)
    assert sum(kafka_topic.committed().values()) == len(docs)  # type: ignore[arg-type]


def test_broker_restart_is_reconnected_and_nothing_is_lost(
    persistent_broker: TansuBroker,
    fake_llm_factory: Callable[..., FakeOpenAI],
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """The broker stops mid-run with work in flight and comes back (its log kept): the consumer reconnects,
    commits what it wrote meanwhile, and consumes what is produced after the restart."""
    llm = fake_llm_factory(latency_s=(0.05, 0.3))
    topic = create_topic(persistent_broker, 3)
    first, later = documents(60), documents(60, start=60)
    topic.produce(first)
    out_uri = str(tmp_path / "out")
    consumer = Consumer(topic, out_uri, llm.url, tmp_path, "--max-in-flight-docs", "8")
    consumers.append(consumer.start())
    wait_committed(topic, 10)
    persistent_broker.stop()
    time.sleep(2)  # the broker is away for a while, not just a blip
    persistent_broker.start()
    topic.produce(later)
    # files roll every 5 records: the tail of each partition is written by the SIGTERM flush
    wait_committed(topic, len(first) + len(later) - 3 * 4, timeout=120)
    consumer.terminate()
    assert consumer.wait(60) == 0, consumer.log()[-3000:]

    assert_exactly_once(read_output(out_uri, topic.name), first + later)
    assert sum(topic.committed().values()) == len(first) + len(later)  # type: ignore[arg-type]
