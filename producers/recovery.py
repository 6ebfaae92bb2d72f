"""Find what an earlier run of a file sent, so a resumed run sends it no second time.

Every message a crawl producer sends carries three headers: the file it came from, its WARC-Record-ID and its
position in the file (byte offset of its record or gzip member, and its index in the member); a record is known by
position and id together, since ids may be missing or repeated in real crawl files. A run that
dies (kill -9) between a send and its checkpoint leaves messages in the topic that its progress does not know
about. Each file is sent by a transactional producer whose `transactional_id` is derived from the file
(`transactional_id`), so a run taking the file over first calls `init_transactions()`: the broker bumps the
producer epoch, aborts the dead run's open transaction and refuses every request of the dead run it handles from
then on, however late it arrives. Only then does the new run read each partition from the file's `scan_from`
offset (at or before its first unacknowledged message) to the end and collect the records of that file: those
are skipped.

The scan reads `read_committed`, as every consumer of the topic must: what it finds is then exactly what the
consumers are given, whatever the broker does with aborted transactions. Kafka hides them (the resumed run sends
their records again); tansu 0.6 gives them to `read_committed` readers too (the resumed run finds and skips them).
"""

from __future__ import annotations

import hashlib
import time

from kafka import KafkaConsumer, TopicPartition

FILE_HEADER = "webr-crawl-file"
RECORD_HEADER = "webr-crawl-record"
POSITION_HEADER = "webr-crawl-position"

SentKey = tuple[str, str]
"""A sent record as a resumed run recognises it: (position in the file, WARC-Record-ID)."""


class ScanTimeout(Exception):
    """The topic could not be read to its end in time (a transaction held open, a slow broker): transient, the
    file is left for a later try, never reported as unreadable."""


def transactional_id(topic: str, file_key: str) -> str:
    """The same for every run of one file into one topic (so a run fences the runs before it), of bounded length."""
    digest = hashlib.sha256(f"{topic}\0{file_key}".encode()).hexdigest()[:32]
    return f"webr-crawl-{digest}"


def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """The current end offset of every partition, open transactions included: a safe `scan_from` for a file about
    to start, and how far a scan must read."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = _partitions(consumer, topic)
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        consumer.close(autocommit=False)


def sent_records(
    bootstrap_servers: str, topic: str, scan_from: dict[int, int], file_key: str, timeout: float
) -> dict[SentKey, tuple[int, int]]:
    """{(position, record id): (partition, offset)} of the messages from `file_key` at or after `scan_from` that
    consumers see.

    Call it only after fencing the file's earlier runs (`init_transactions()`). It reads to the end offsets taken
    then, which a `read_committed` reader reaches once every transaction before them is committed or aborted:
    other files' runs commit every few seconds, a dead one is aborted by the broker's transaction timeout.
    """
    ends = end_offsets(bootstrap_servers, topic)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        max_poll_records=2000,
        isolation_level="read_committed",
    )
    wanted = file_key.encode()
    found: dict[SentKey, tuple[int, int]] = {}
    try:
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, scan_from.get(tp.partition, 0))
        deadline = time.monotonic() + timeout
        # Reading past an end offset means its whole batch was fetched (control batches and aborted ones are
        # stepped over), so `position >= end` is enough even on a broker whose end offset is the last batch's base
        # offset + 1.
        while any(consumer.position(tp) < ends[tp.partition] for tp in tps):
            if time.monotonic() > deadline:
                raise ScanTimeout(f"could not read {topic} to its end within {timeout:.0f}s")
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    headers = dict(message.headers or [])
                    if headers.get(FILE_HEADER) == wanted and RECORD_HEADER in headers and POSITION_HEADER in headers:
                        key = (headers[POSITION_HEADER].decode(), headers[RECORD_HEADER].decode())
                        found[key] = (message.partition, message.offset)
        return found
    finally:
        consumer.close(autocommit=False)


def _partitions(consumer: KafkaConsumer, topic: str) -> list[int]:
    deadline = time.monotonic() + 30
    while not (partitions := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no metadata for topic {topic!r}")
        time.sleep(0.1)
    return sorted(partitions)
