"""Rebalances, SIGTERM, an object-store outage and a broker restart: nothing lost, nothing doubled."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.storage import resolve
from devtools.fakeopenai import FakeOpenAI
from devtools.tansu import KafkaTopic, TansuBroker, create_topic, wait_for
from tests.fixtures.s3 import S3Bucket
from tests.kafka.helpers import Consumer, Output, documents, read_output, wait_committed
from tests.support.holding_proxy import HoldingProxy, holding_proxy
from trainer.snapshot import take_snapshot

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


def test_a_file_that_reaches_the_store_after_its_writer_lost_the_partition_is_superseded(
    kafka_topic: KafkaTopic,
    fake_llm_factory: Callable[..., FakeOpenAI],
    s3_bucket: S3Bucket,
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """A write still on the wire when its writer loses the partition, with real parts: the network to the store
    holds the first member's request that completes a file's upload, and the member dies (kill -9) with it on the
    wire. A second member takes the partitions over, redoes the uncommitted offsets and commits past them; then
    the held request reaches the store: a file of the first member's generation over offsets the second has
    committed. Readers leave it out (the second's generation is later), so every document is there once, for the
    test's reader and for a trainer's snapshot."""
    llm = fake_llm_factory(latency_s=(0.05, 0.3))
    docs = documents(60)
    kafka_topic.produce(docs)
    out_uri, endpoint = s3_bucket.uri(), s3_bucket.endpoint_url
    location = resolve(out_uri, s3_endpoint_url=endpoint)
    with holding_proxy(s3_bucket.server.port) as store_link:
        first = Consumer(kafka_topic, out_uri, llm.url, tmp_path, s3_endpoint_url=store_link.url, name="first")
        consumers.append(first.start())
        wait_committed(kafka_topic, 5)
        hold_an_output_put(store_link, kafka_topic.name)
        first.kill()
        idle = ("--stop-after-idle", "4")
        second = Consumer(kafka_topic, out_uri, llm.url, tmp_path, *idle, s3_endpoint_url=endpoint, name="second")
        consumers.append(second.start())
        assert second.wait() == 0, second.log()[-3000:]
        assert read_output(out_uri, kafka_topic.name, endpoint).superseded == []
        store_link.release()

        def late() -> Output | None:
            out = read_output(out_uri, kafka_topic.name, endpoint)
            return out if out.superseded else None

        out = wait_for(late, 30, "the held request to reach the store")
    assert_exactly_once(out, docs)
    doubled = {
        (r["source_partition"], r["source_offset"])
        for path in out.superseded
        for r in pq.read_table(path, filesystem=location.fs).to_pylist()
    }
    assert doubled and doubled <= set(out.sources), "the late file covers offsets the second member wrote"
    snapshot, _ = take_snapshot(location)
    late_rows = {p for p in out.superseded if "/_rejected/" not in p}
    assert {f"{location.root}/{p}" for p in snapshot.superseded} == late_rows
    assert snapshot.rows == len(out.rows) and snapshot.held_back == ()


def hold_an_output_put(store_link: HoldingProxy, topic: str) -> None:
    """Hold the store's traffic once what is held is the whole request that makes an output file of `topic`
    appear (a PutObject, or the CompleteMultipartUpload of pyarrow's uploads); the sink's one thread then waits on
    it. Anything else held first (the upload's start, a marker, a listing) is let through and the hold tried
    again."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        store_link.hold()
        held = wait_for(store_link.held_requests, 15, "a request to the store")
        if any(_publishes(r, topic) for r in held):
            # its body may follow its head a little later (after `Expect: 100-continue` waited in vain)
            whole = lambda: any(_publishes(r, topic) and _whole(r) for r in store_link.held_requests())  # noqa: E731
            wait_for(whole, 10, "the whole request to be held")
            return
        store_link.release()
    raise AssertionError("no request publishing an output file to hold in 60 s")


def _publishes(request: bytes, topic: str) -> bool:
    words = request.split(b"\r\n", 1)[0].split(b" ")
    if len(words) != 3:  # held in the middle of a request's body
        return False
    method, target, _ = words
    whole = (method == b"PUT" and b"partNumber=" not in target) or (method == b"POST" and b"uploadId=" in target)
    return whole and any(f"/{topic}{plus}".encode() in target for plus in ("+", "%2B"))  # a file, not a marker


def _whole(request: bytes) -> bool:
    """Whether the head and all of the body of an HTTP/1.1 request are there."""
    head, _, body = request.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:] if b":" in line)
    if fields.get(b"transfer-encoding", b"").strip() == b"chunked":
        return body.endswith(b"0\r\n\r\n")
    return len(body) >= int(fields.get(b"content-length", b"0"))
