"""Produce JSON-array and JSONL files of crawled pages to a Kafka topic.

    python -m producers.files --bootstrap-servers HOST:PORT --topic T [--partitions N] [--strict] FILE... (- = stdin)

Each record is validated and normalised by `core.records` (the parser every consumer shares), keyed by its
`doc_id` (so one document always lands on the same partition) and sent as `Document.to_json()`. Records repeating
a `doc_id` already sent in this run are exact duplicates and are skipped. Invalid records are reported with their
line or array position and counted; `--strict` stops at the first one. The producer is idempotent with acks=all,
batches with `linger_ms` and compresses, so a retried send never lands twice. There is no resume: a rerun sends
everything again, and the consumers' dedup by `doc_id` drops what had landed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from kafka import KafkaProducer
from tqdm import tqdm

from core.records import iter_file
from core.topics import ensure_topic
from producers.cli import files_parser, load_settings, print_summary
from producers.settings import FilesSettings, ProducerKafkaSettings

log = logging.getLogger("producers.files")

PROGRESS_MIN_BYTES = 8 << 20
"""Files at least this big get a progress bar (on a terminal); small ones finish before it would help."""


class StrictModeError(Exception):
    """An invalid record under `--strict`."""


@dataclass(slots=True)
class Summary:
    """What one run did; printed as one JSON line on stdout so scripts can read it."""

    topic: str
    files: int = 0
    records: int = 0
    produced: int = 0
    invalid: int = 0
    duplicates: int = 0
    failed: int = 0
    unreadable_files: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 unless something that was meant to reach Kafka did not (a failed send or an unreadable file)."""
        return 1 if self.failed or self.unreadable_files else 0


class _Source:
    """A byte stream for `iter_file`: counts bytes for the progress bar, and lets stdin go back to its start.

    `iter_file` peeks at the first significant byte to tell a JSON array from JSONL and then seeks to 0; a pipe
    cannot seek, so what was read before that seek is recorded and replayed.
    """

    def __init__(self, raw: IO[bytes], bar: tqdm | None = None, rewindable: bool = False) -> None:
        self._raw = raw
        self._bar = bar
        self._recording: bytearray | None = bytearray() if rewindable else None
        self._pending = b""

    def _count(self, data: bytes) -> bytes:
        if self._bar is not None and data:
            self._bar.update(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._recording is None:
            return self._raw.seek(offset, whence)
        if (offset, whence) != (0, 0):
            raise OSError("stdin can only be rewound to its start")
        self._pending, self._recording = bytes(self._recording), None
        return 0

    def read(self, size: int = -1) -> bytes:
        if self._pending:
            take = len(self._pending) if size is None or size < 0 else size
            data, self._pending = self._pending[:take], self._pending[take:]
            return data
        data = self._raw.read(size)
        if self._recording is not None:
            self._recording += data
        return self._count(data)

    def readline(self, size: int = -1) -> bytes:
        if self._pending:
            head, sep, rest = self._pending.partition(b"\n")
            if sep:
                self._pending = rest
                return head + sep
            self._pending = b""
            return head + self._count(self._raw.readline())
        return self._count(self._raw.readline())

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


@dataclass(slots=True)
class _Delivery:
    """Delivery callbacks: count acknowledged and failed sends (they run on the producer's I/O thread)."""

    summary: Summary
    sent: int = 0
    settled: int = 0

    def ok(self, _metadata: Any) -> None:
        self.summary.produced += 1
        self.settled += 1

    def failed(self, exc: BaseException) -> None:
        self.summary.failed += 1
        self.settled += 1
        log.error("send failed: %s", exc)

    @property
    def outstanding(self) -> int:
        return self.sent - self.settled


def _progress(path: str, progress: bool) -> tqdm | None:
    if not progress or path == "-" or os.path.getsize(path) < PROGRESS_MIN_BYTES:
        return None
    return tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=os.path.basename(path), disable=None)


def produce_file(
    path: str,
    producer: KafkaProducer,
    summary: Summary,
    *,
    strict: bool,
    progress: bool,
    seen: set[str],
    max_outstanding: int,
) -> None:
    """Send every valid record of one file (or stdin); raises `StrictModeError` on an invalid one if `strict`.

    With `max_outstanding` sends unacknowledged it waits for them: the Kafka client would otherwise hold every
    record of a file faster than the broker in memory (it has no buffer limit)."""
    bar = _progress(path, progress)
    delivery = _Delivery(summary)
    fh: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 - closed below
    try:
        source = _Source(fh, bar, rewindable=path == "-")
        for record in iter_file(path, source):  # type: ignore[arg-type]
            summary.records += 1
            if record.error is not None:
                summary.invalid += 1
                reason = record.error.reason
                summary.invalid_reasons[reason] = summary.invalid_reasons.get(reason, 0) + 1
                print(f"{path}: invalid record at {record.location}: {reason}: {record.error.detail}", file=sys.stderr)
                if strict:
                    raise StrictModeError(f"{path}: {record.location}: {reason}")
                continue
            doc = record.document
            assert doc is not None
            if doc.doc_id in seen:
                summary.duplicates += 1
                continue
            seen.add(doc.doc_id)
            future = producer.send(summary.topic, key=doc.doc_id.encode(), value=doc.to_json())
            future.add_callback(delivery.ok)
            future.add_errback(delivery.failed)
            delivery.sent += 1
            if delivery.outstanding >= max_outstanding:
                producer.flush()
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
        if bar is not None:
            bar.close()


def make_producer(
    kafka: ProducerKafkaSettings, transactional_id: str | None = None, delivery_timeout_s: float = 120.0
) -> KafkaProducer:
    """Idempotent, acks=all, batched and compressed; transactional when given a `transactional_id`. A send not
    acknowledged within `delivery_timeout_s` fails (the client's own retries included)."""
    return KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id="webr-producer",
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        compression_type=None if kafka.compression == "none" else kafka.compression,
        linger_ms=kafka.linger_ms,
        batch_size=kafka.batch_size,
        max_request_size=kafka.max_request_size,
        delivery_timeout_ms=int(delivery_timeout_s * 1000),
    )


def create_topic(kafka: ProducerKafkaSettings) -> None:
    ensure_topic(kafka.bootstrap_servers, kafka.topic, kafka.partitions, kafka.replication_factor)


def run(settings: FilesSettings) -> Summary:
    """Create the topic if needed, send every file, wait for every acknowledgement."""
    create_topic(settings.kafka)
    summary = Summary(topic=settings.kafka.topic)
    started = time.monotonic()
    producer = make_producer(settings.kafka)
    seen: set[str] = set()
    try:
        for path in settings.files:
            summary.files += 1
            try:
                produce_file(
                    path,
                    producer,
                    summary,
                    strict=settings.strict,
                    progress=settings.progress,
                    seen=seen,
                    max_outstanding=settings.max_outstanding,
                )
            except StrictModeError:
                raise
            except Exception as exc:  # a broken JSON array cannot be resynchronised: report it, go on
                summary.unreadable_files += 1
                print(f"{path}: unreadable after {summary.records} records: {exc}", file=sys.stderr)
                if settings.strict:
                    raise StrictModeError(f"{path}: {exc}") from exc
    finally:
        producer.flush()
        producer.close()
        summary.seconds = round(time.monotonic() - started, 3)
    return summary


def make_parser() -> argparse.ArgumentParser:
    return files_parser("python -m producers.files", __doc__, FilesSettings, "+")


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(FilesSettings, make_parser(), argv)
    if settings is None:
        return 2
    try:
        summary = run(settings)
    except StrictModeError as exc:
        print(f"--strict: stopping at the first invalid record: {exc}", file=sys.stderr)
        return 2
    print_summary(
        summary,
        f"{summary.produced} documents sent to {summary.topic} from {summary.files} file(s) in {summary.seconds:.1f}s;"
        f" {summary.invalid} invalid, {summary.duplicates} duplicate, {summary.failed} failed",
    )
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
