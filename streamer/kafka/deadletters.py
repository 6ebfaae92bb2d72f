"""The dead-letter topic: every rejected record, replayable, sent once its output range is durable.

A dead letter carries the original message (key, value, timestamp) unchanged, so replaying it is producing it
back to the source topic, and headers that say where it came from and why it was rejected. Sending only after
the range's file is written, and awaiting delivery before the offsets are committed, means a rejection reaches
the topic at least once; a crash between the two sends it again on replay, and the `webr.source.*` headers let
a reader drop the repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from core.exceptions import PipelineError
from core.outcomes import Rejection
from streamer.pipeline import SourceMessage

if TYPE_CHECKING:  # kafka-python is imported by the Kafka runs that use it, not by file runs (start-up time)
    from kafka.producer.future import FutureRecordMetadata

log = logging.getLogger(__name__)

MAX_DETAIL_BYTES = 1000


class DeadLetterError(PipelineError):
    """A dead letter could not be delivered: the offsets that cover it must not be committed."""


def dead_letter_headers(source: SourceMessage, rejection: Rejection) -> list[tuple[str, bytes]]:
    """Provenance and reason, as Kafka Connect's DLQ does (`webr.` instead of `__connect.errors.`)."""
    headers = [
        ("webr.source.topic", source.topic.encode()),
        ("webr.source.partition", str(source.partition).encode()),
        ("webr.source.offset", str(source.offset).encode()),
        ("webr.stage", rejection.stage.encode()),
        ("webr.reason", rejection.reason.encode()),
        ("webr.detail", rejection.detail.encode("utf-8", "replace")[:MAX_DETAIL_BYTES]),
    ]
    if rejection.doc_id is not None:
        headers.append(("webr.doc_id", rejection.doc_id.encode()))
    return headers


class DeadLetters:
    """Holds rejections per partition until their range is durable, then sends them; `flush()` awaits delivery."""

    def __init__(self, bootstrap_servers: str, topic: str, *, client_id: str = "webr-dead-letters") -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            compression_type="gzip",
            linger_ms=20,
            max_request_size=16 << 20,
        )
        self._held: dict[int, list[tuple[SourceMessage, Rejection]]] = defaultdict(list)
        self._sent: list[tuple[FutureRecordMetadata, SourceMessage, Rejection]] = []
        self._flushing = asyncio.Lock()
        """Flushes take turns: one that found the letters taken by another in flight would return before they
        are acknowledged (a revocation's commit beside the background one)."""
        self.delivered = 0

    def hold(self, source: SourceMessage, rejection: Rejection) -> None:
        self._held[source.partition].append((source, rejection))

    def release(self, partition: int, end_offset: int) -> int:
        """Send the held rejections of `partition` below `end_offset` (their output file exists now)."""
        held = self._held.get(partition, [])
        ready = [item for item in held if item[0].offset < end_offset]
        self._held[partition] = [item for item in held if item[0].offset >= end_offset]
        for source, rejection in ready:
            self._send(source, rejection)
        return len(ready)

    def _send(self, source: SourceMessage, rejection: Rejection) -> None:
        future = self._producer.send(
            self.topic,
            key=source.key,
            value=source.value,
            headers=dead_letter_headers(source, rejection),
            timestamp_ms=source.timestamp_ms,
        )
        self._sent.append((future, source, rejection))

    def discard(self, partitions: set[int]) -> None:
        """Forget held rejections of revoked partitions: their next owner reprocesses them."""
        for partition in partitions:
            self._held.pop(partition, None)

    async def flush(self) -> int:
        """Wait until every sent dead letter is acknowledged.

        Raises `DeadLetterError` if some were not (the broker is away): those are sent again, and the caller
        commits nothing until a later `flush()` succeeds.
        """
        async with self._flushing:
            if not self._sent:
                return 0
            sent, self._sent = self._sent, []
            await asyncio.get_running_loop().run_in_executor(None, self._producer.flush)
            failed = [(f, src, rej) for f, src, rej in sent if not f.succeeded()]
            self.delivered += len(sent) - len(failed)
            if failed:
                for _, source, rejection in failed:
                    self._send(source, rejection)
                raise DeadLetterError(
                    f"{len(failed)} dead letters not delivered to {self.topic}: {failed[0][0].exception}"
                )
            return len(sent)

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the producer, waiting at most `timeout_s` for what it still holds (what matters was awaited by
        `flush()` before the offsets that cover it were committed)."""
        from kafka.errors import KafkaError

        try:
            self._producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("dead-letter producer close failed: %s", exc)
