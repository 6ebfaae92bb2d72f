"""Find what a crashed run sent but never saw acknowledged, so a resumed run sends it no second time.

Every message a crawl producer sends carries two headers: the file it came from and its WARC-Record-ID. A run that
dies (kill -9) between a send and its acknowledgement leaves messages in the topic that its progress does not know
about. Before resuming a file, the producer reads each partition from the file's `scan_from` offset (at or before
its first unacknowledged message) to the end and collects the record ids of that file: those are skipped.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

FILE_HEADER = "webr-crawl-file"
RECORD_HEADER = "webr-crawl-record"


def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """The current end offset of every partition: a safe `scan_from` for a file about to start."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = _partitions(consumer, topic)
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        consumer.close(autocommit=False)


def wait_until_settled(bootstrap_servers: str, topic: str, quiet_s: float, timeout: float = 120.0) -> None:
    """Return once no partition's end offset has moved for `quiet_s`.

    A producer killed mid-send leaves requests in its socket that the broker may append a little later (longer on
    a loaded broker). A run taking over the file reads the topic only after the topic is quiet, so it does not
    miss them and send their records twice.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        last, quiet_since, deadline = consumer.end_offsets(tps), time.monotonic(), time.monotonic() + timeout
        while time.monotonic() - quiet_since < quiet_s:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} kept growing for {timeout:.0f}s: another producer is still writing")
            time.sleep(min(0.25, quiet_s))
            now = consumer.end_offsets(tps)
            if now != last:
                last, quiet_since = now, time.monotonic()
    finally:
        consumer.close(autocommit=False)


def sent_records(
    bootstrap_servers: str, topic: str, scan_from: dict[int, int], file_key: str, timeout: float = 120.0
) -> dict[str, tuple[int, int]]:
    """{record id: (partition, offset)} of the messages from `file_key` at or after `scan_from`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, max_poll_records=2000)
    wanted = file_key.encode()
    found: dict[str, tuple[int, int]] = {}
    try:
        tps = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, scan_from.get(tp.partition, 0))
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        # Reading past an end offset means its whole batch was fetched, so `position >= end` is enough even on a
        # broker whose end offset is the last batch's base offset + 1.
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout:.0f}s")
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    headers = dict(message.headers or [])
                    if headers.get(FILE_HEADER) == wanted and RECORD_HEADER in headers:
                        found[headers[RECORD_HEADER].decode()] = (message.partition, message.offset)
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
