"""Fast checks of the runtime's parts: settings, recovery of a partition's output, commit order, sink outage."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from core.exceptions import InvalidRecord
from core.keys import LEGACY_GENERATION, FileKey, OutputFile, file_name, list_outputs, parse_file_name, superseded
from core.outcomes import Outcome, PairRow, Rejection, SourceRef, Usage
from core.records import Document
from core.storage import resolve
from devtools.tansu import KafkaTopic
from streamer.kafka.deadletters import DeadLetters
from streamer.kafka.settings import KafkaRunConfig, KafkaSettings
from streamer.metrics import ConsumerMetrics
from streamer.pipeline import NoDeadLetters, Pipeline, SourceMessage
from streamer.recovery import clear_uncommitted, committed_rows, dedup_ranges
from streamer.settings import ConsumeSettings
from streamer.sinks.parquet import ParquetSink, RollPolicy, SinkWriteError
from tests.fixtures.s3 import S3Bucket

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def row(partition: int, offset: int, request: str = "") -> PairRow:
    ref = SourceRef("t", partition, offset, 1_790_000_000_000)
    return PairRow(
        f"d{partition}-{offset}",
        "pid",
        "instr",
        "answer",
        request or f"request {partition} {offset}",
        "WI",
        "WI_all",
        "persona",
        None,
        "m",
        "v1",
        0,
        10,
        False,
        Usage(3, 10, 5, 0, None),
        ref,
        NOW,
        page_hash=f"h{offset}",
    )


def test_settings_defaults_and_refusals() -> None:
    s = KafkaSettings(bootstrap_servers="b:9092", topic="pages")
    assert s.dead_letter_topic == "pages.dlq"
    assert s.heartbeat_interval_ms == 3000
    with pytest.raises(ValidationError, match="needs --topic"):
        KafkaSettings(bootstrap_servers="b:9092")
    with pytest.raises(ValidationError, match="must differ"):
        KafkaSettings(bootstrap_servers="b:9092", topic="pages", dlq_topic="pages")
    with pytest.raises(ValidationError):
        KafkaSettings(topic="pages", session_timeout_ms=10)
    wide = ConsumeSettings(
        bootstrap_servers="b:9092",
        topic="pages",
        group_id="g",
        roll_interval_ms=60_000,
        output="s3://b/p",
        s3_endpoint_url="http://s3",
        roll_records=500,
        max_in_flight_docs=32,
        base_url="ignored",
    )
    config = KafkaRunConfig.from_settings(wide)
    assert (config.kafka.group_id, config.output, config.max_in_flight_docs) == ("g", "s3://b/p", 32)
    assert config.roll == RollPolicy(max_records=500, max_record_time_ms=60_000)


def test_consume_cli_refuses_kafka_settings_that_cannot_work(capsys: pytest.CaptureFixture[str]) -> None:
    """The flags reach `KafkaSettings`' validators through `python -m streamer.consume` (exit 2, no traceback)."""
    from streamer.consume import main

    assert main(["--bootstrap-servers", "b:9092", "--output", "o"]) == 2
    assert "needs --topic" in capsys.readouterr().err
    assert main(["--bootstrap-servers", "b:9092", "--topic", "t", "--dlq-topic", "t", "--output", "o"]) == 2
    assert "must differ" in capsys.readouterr().err


def test_file_names_round_trip() -> None:
    name = file_name("my.topic-1", 2, 42, 50, 7)
    assert name == "my.topic-1+2+00000000000000000042+00000000000000000050+g7.parquet"
    assert parse_file_name(name) == FileKey("my.topic-1", 2, 42, 50, 7)
    assert parse_file_name("a+b+3+0+5+6+g0.parquet") == FileKey("a+b+3", 0, 5, 6, 0), "a stem may hold a +"
    assert parse_file_name("my.topic-1+2+00000000000000000042.parquet") == FileKey(
        "my.topic-1", 2, 42, None, LEGACY_GENERATION
    ), "names written before ranges and generations were named"
    assert parse_file_name("t+x+1.parquet") is None
    assert parse_file_name("t+0+1+2+7.parquet") == FileKey("t+0+1", 2, 7, None, LEGACY_GENERATION), "no g: legacy"
    assert parse_file_name("README.md") is None


def output(partition: int, start: int, end: int | None, generation: int, *, rejected: bool = False) -> OutputFile:
    key = FileKey("t", partition, start, end, generation)
    return OutputFile(f"{'r' if rejected else ''}{partition}:{start}-{end}@{generation}", key, rejected)


def test_a_range_overlapped_by_a_later_generation_is_superseded() -> None:
    legit = [output(0, 0, 5, 3), output(0, 5, 9, 4, rejected=True), output(0, 9, 20, 4), output(0, 20, 22, 6)]
    zombies = [output(0, 7, 9, 3), output(0, 19, 21, 4), output(0, 8, 12, 2, rejected=True)]
    elsewhere = [output(1, 7, 9, 3), output(0, 22, 30, 5)]  # another partition; an older range beyond the others
    legacy = [output(0, 6, None, LEGACY_GENERATION)]
    files = legit + zombies + elsewhere + legacy
    assert sorted(f.path for f in superseded(files)) == sorted(f.path for f in zombies)
    assert superseded(legit + elsewhere + legacy) == [], "ranges that meet end to end do not overlap"
    assert superseded([output(0, 0, 5, 3), output(0, 0, 5, 3, rejected=True)]) == [], "rows and rejections of a range"


def test_new_owner_clears_uncommitted_and_superseded_files_and_recalls_committed_rows(tmp_path: Path) -> None:
    location = resolve(str(tmp_path))
    sink = ParquetSink(location, RollPolicy(max_records=5))
    for p in (0, 1):
        sink.open("t", p, 4)
        for o in range(12):
            outcome: Outcome = (
                row(p, o)
                if o != 3
                else Rejection(f"d{p}-{o}", "request", "refused", "", SourceRef("t", p, o, 1_790_000_000_000), NOW)
            )
            sink.add("t", p, o, outcome)
    sink.flush()
    assert len(list_outputs(location, "t")) == 8  # 3 ranges x 2 partitions, plus 2 rejection files
    late = ParquetSink(location, RollPolicy(max_records=3))  # partition 1's owner of generation 3, cut off
    late.open("t", 1, 3)
    late.add("t", 1, 2, row(1, 2))
    [zombie] = late.flush()

    orphan = tmp_path / "t" / "dt=2026-09-21" / f".tmp-0123abcd-{file_name('t', 0, 10, 12, 4)}"
    orphan.write_bytes(b"half a file from a killed write")
    removed = clear_uncommitted(location, "t", {0: 5, 1: 12}, 5)
    assert str(orphan) in removed and not orphan.exists()
    removed.remove(str(orphan))
    keys = [parse_file_name(Path(r).name) for r in removed]
    assert sorted(keys, key=lambda k: (k.partition, k.start_offset)) == [  # type: ignore[union-attr]
        FileKey("t", 0, 5, 10, 4),
        FileKey("t", 0, 10, 12, 4),
        FileKey("t", 1, 2, 3, 3),
    ]
    assert removed[-1] == zombie.keys[0]
    left = {(f.key.partition, f.key.start_offset, f.rejected) for f in list_outputs(location, "t")}
    assert left == {(0, 0, False), (0, 0, True), (1, 0, False), (1, 0, True), (1, 5, False), (1, 10, False)}

    late.add("t", 1, 3, row(1, 3))  # lands after the clearing: readers skip it
    late.flush()
    recalled = list(committed_rows(location, "t", {0: (0, 5), 1: (2, 7)}))
    assert sorted(r[1] for r in recalled) == sorted(
        [f"request 0 {o}" for o in (0, 1, 2, 4)] + [f"request 1 {o}" for o in (2, 4, 5, 6)]
    )


def test_a_member_that_lost_the_partition_while_preparing_it_leaves_the_next_owners_files(tmp_path: Path) -> None:
    """Assigned in generation 4 at offset 10, this member is slow to clear (a slow rewind or listing) and loses the
    partition meanwhile; generation 5's owner writes and commits 10..13. The late clearing must not delete that."""
    location = resolve(str(tmp_path))
    written = []
    for generation, end in ((4, 12), (5, 13)):  # this member's uncommitted output, then the next owner's
        sink = ParquetSink(location, RollPolicy(max_records=10))
        sink.open("t", 0, generation)
        for o in range(10, end):
            sink.add("t", 0, o, row(0, o))
        written += sink.flush()
    own, next_owners = written

    assert clear_uncommitted(location, "t", {0: 10}, 4) == [own.keys[0]]
    assert [f.path for f in list_outputs(location, "t")] == list(next_owners.keys)


def test_dedup_recall_loads_only_what_the_index_lacks_and_restarts_when_it_knows_too_much() -> None:
    assert dedup_ranges({}, {0: 10, 1: 0}) == (False, {0: (0, 10)})
    assert dedup_ranges({0: 10, 1: 4}, {0: 15, 1: 4}) == (False, {0: (10, 15)})
    # partition 1 was admitted up to 9 but only 4 was committed: 4..8 will be processed again
    assert dedup_ranges({0: 10, 1: 9}, {0: 15, 1: 4}) == (True, {0: (0, 15), 1: (0, 4)})


class ReversedProcessor:
    """Finishes documents in reverse arrival order, so the window must restore offset order."""

    async def process(self, doc: Document, ref: SourceRef, *, seq: int) -> Outcome:
        await asyncio.sleep(0.05 * (10 - ref.offset % 10))
        return row(ref.partition, ref.offset)

    def reject_invalid(self, error: InvalidRecord, ref: SourceRef, raw: bytes | None) -> Rejection:
        return Rejection(None, "input", error.reason, error.detail, ref, NOW, payload=raw)


class AdmitLog:
    """A dedup stage that admits everything and records the order outcomes reached it in."""

    def __init__(self) -> None:
        self.admitted: list[tuple[int, int]] = []

    def admit(self, outcome: Outcome) -> Outcome:
        self.admitted.append((outcome.ref.partition, outcome.ref.offset))
        return outcome

    def recall(self, branch: str, request: str, page_hash: str) -> None:
        raise AssertionError("nothing is recalled in this test")

    def reset(self) -> None:
        raise AssertionError("nothing is reset in this test")


def record(partition: int, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord("t", partition, 0, offset, 1_790_000_000_000, 0, b"k", value, [], None, 1, len(value), -1)


async def test_outcomes_leave_in_offset_order_and_only_durable_offsets_are_committable(
    tmp_path: Path, kafka_topic: KafkaTopic
) -> None:
    dedup = AdmitLog()
    sink = ParquetSink(resolve(str(tmp_path)), RollPolicy(max_records=4))
    dead = DeadLetters(kafka_topic.bootstrap, kafka_topic.name + ".dlq")
    pipe = Pipeline[ConsumerRecord](
        "t", ReversedProcessor(), sink, dead, ConsumerMetrics(CollectorRegistry()), max_in_flight=8, dedup=dedup
    )
    try:
        pipe.open(0, 100, 1)
        good = b'{"id": "x", "text": "a page"}'
        # offset 104 is missing (a transaction marker): the range still covers it
        batch = [record(0, o, good if o != 102 else b"not json") for o in (100, 101, 102, 103, 105, 106, 107)]
        assert pipe.accept(0, batch) == 7
        assert pipe.accept(0, batch[:3]) == 0, "refetched offsets must be ignored"
        assert pipe.dispatch() == 7
        assert pipe.running == 6  # the invalid record needs no work
        while pipe.running or len(pipe.parts[0].window):
            await asyncio.wait_for(pipe.wake.wait(), 5)
            pipe.wake.clear()
            async with pipe.lock:
                await pipe.emit()
        assert dedup.admitted == [(0, o) for o in (100, 101, 102, 103, 105, 106, 107)]
        async with pipe.lock:
            assert await pipe.checkpoint(flush=False) == {0: 104}, "the first file rolled at 4 records"
        await pipe.deliver_dead_letters()
        assert dead.delivered == 1, "the rejection of offset 102 goes out with its file, before the commit"
        async with pipe.lock:
            assert await pipe.checkpoint(flush=True) == {0: 108}
        await pipe.deliver_dead_letters()
        pipe.committed({0: 108})
        assert pipe.uncommitted == {}
        assert dead.delivered == 1
    finally:
        dead.close()
        pipe.close()


class CountingDedup(AdmitLog):
    """Admits everything; counts the times it is started over."""

    def __init__(self) -> None:
        super().__init__()
        self.resets = 0

    def recall(self, branch: str, request: str, page_hash: str) -> None:
        pass

    def reset(self) -> None:
        self.resets += 1


@pytest.mark.parametrize("committed_after_close", [True, False])
async def test_a_partition_closed_with_uncommitted_rows_starts_the_dedup_index_over(
    tmp_path: Path, committed_after_close: bool
) -> None:
    """Rows admitted and never committed (a lost membership, a refused commit) may be written differently by the
    next owner: the index must not keep them, even when the partition comes back beyond them. A revocation's
    commit arrives after the partition was closed, and then nothing is stale."""
    dedup = CountingDedup()
    sink = ParquetSink(resolve(str(tmp_path)), RollPolicy(max_records=10))
    metrics = ConsumerMetrics(CollectorRegistry())
    pipe = Pipeline[ConsumerRecord](
        "t", ReversedProcessor(), sink, NoDeadLetters(), metrics, max_in_flight=8, dedup=dedup
    )
    try:
        pipe.open(0, 0, 1)
        pipe.accept(0, [record(0, o, b'{"id": "x", "text": "a page"}') for o in range(3)])
        pipe.dispatch()
        while len(dedup.admitted) < 3:
            await asyncio.wait_for(pipe.wake.wait(), 5)
            pipe.wake.clear()
            async with pipe.lock:
                await pipe.emit()
        async with pipe.lock:
            assert await pipe.checkpoint(flush=True) == {0: 3}
        await pipe.close_partitions([0])
        if committed_after_close:
            pipe.committed({0: 3})
        async with pipe.lock:
            await pipe.recall_dedup({0: 50})  # back, after another owner committed up to 50
        assert dedup.resets == (0 if committed_after_close else 1)
    finally:
        pipe.close()


async def test_a_revoked_partition_leaves_no_committed_offset_gauge_even_when_its_commit_follows(
    tmp_path: Path,
) -> None:
    """A revocation commits after the partition was closed; its offset is the next owner's to export, so this
    member must not set the gauge again for a partition it no longer owns."""
    registry = CollectorRegistry()
    sink = ParquetSink(resolve(str(tmp_path)), RollPolicy(max_records=10))
    pipe = Pipeline[ConsumerRecord](
        "t", ReversedProcessor(), sink, NoDeadLetters(), ConsumerMetrics(registry), max_in_flight=8, dedup=AdmitLog()
    )
    try:
        for p in (0, 1):
            pipe.open(p, 5, 1)
        await pipe.close_partitions([0])
        pipe.committed({0: 7, 1: 9})
        assert registry.get_sample_value("webr_committed_offset", {"partition": "0"}) is None
        assert registry.get_sample_value("webr_committed_offset", {"partition": "1"}) == 9
    finally:
        pipe.close()


async def test_a_flush_returns_only_once_the_letters_another_flush_took_are_acknowledged(
    kafka_topic: KafkaTopic,
) -> None:
    """A revocation's commit and the background one may flush together: the second must not return while the
    letters the first took are unacknowledged, or it commits offsets past a rejection not yet in the topic."""
    dead = DeadLetters(kafka_topic.bootstrap, kafka_topic.name + ".dlq")
    try:
        for o in range(20):
            ref = SourceRef("t", 0, o, 1_790_000_000_000)
            dead.hold(SourceMessage("t", 0, o, b"k", b"{}", None), Rejection(None, "input", "bad", "", ref, NOW))
        assert dead.release(0, 20) == 20
        first = asyncio.ensure_future(dead.flush())
        await asyncio.sleep(0)  # it has taken the letters and waits for the producer
        assert await dead.flush() == 0
        assert first.done() and first.result() == 20
        assert dead.delivered == 20
    finally:
        dead.close()


async def test_a_dead_letter_too_large_for_the_topic_goes_without_its_value(kafka_topic: KafkaTopic) -> None:
    """Headers add ~1 KB to a record the source topic took: near the size limit, the letter is refused for good.
    Re-sending it as it is would hold the partition's commits back forever; it goes without the page (which the
    output's `_rejected/` files keep), saying why."""
    dlq = kafka_topic.name + ".dlq"
    dead = DeadLetters(kafka_topic.bootstrap, dlq, max_request_size=2048)
    try:
        for o, value in enumerate((b"x" * 4096, b"{}")):
            ref = SourceRef("t", 0, o, 1_790_000_000_000)
            dead.hold(SourceMessage("t", 0, o, b"k", value, None), Rejection(f"d{o}", "input", "bad", "", ref, NOW))
        dead.release(0, 2)
        assert await dead.flush() == 2
    finally:
        dead.close()
    letters = {r.offset: r for r in kafka_topic.read(2, topic=dlq, timeout=20)}
    big, small = letters[0], letters[1]
    assert big.value is None and small.value == b"{}"
    assert dict(big.headers)["webr.source.offset"] == b"0"
    assert b"too large" in dict(big.headers)["webr.value.dropped"]
    assert "webr.value.dropped" not in dict(small.headers)


def test_sink_write_during_an_outage_retries_until_aborted(s3_bucket: S3Bucket) -> None:
    """`retry_deadline_s=None`: a write waits out a dead store, and gives up only when told to."""
    sink = ParquetSink(
        resolve(s3_bucket.uri(), s3_endpoint_url=s3_bucket.endpoint_url),
        RollPolicy(max_records=10),
        retry_deadline_s=None,
    )
    sink.setup()
    sink.open("t", 0, 1)
    sink.add("t", 0, 0, row(0, 0))
    s3_bucket.server.stop()
    failure: list[BaseException] = []

    def flush() -> None:
        try:
            sink.flush()
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=flush)
    writer.start()
    writer.join(3)
    assert writer.is_alive(), "gave up on the store while it was down"
    aborted = time.monotonic()
    sink.abort_retries()
    writer.join(30)
    assert not writer.is_alive()
    assert time.monotonic() - aborted < 20
    assert len(failure) == 1 and isinstance(failure[0], SinkWriteError)
    s3_bucket.server.start()
    assert s3_bucket.keys() == [], "nothing may be visible from a write that never completed"
