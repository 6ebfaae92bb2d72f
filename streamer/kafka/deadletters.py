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
from dataclasses import dataclass
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


class UndeliverableDeadLetter(DeadLetterError):
    """The topic refuses a dead letter for good (authorisation, an invalid topic): retrying cannot help."""


@dataclass(slots=True)
class _Letter:
    """A dead letter on its way: its send (None when `send()` itself failed) and whether its value was dropped."""

    source: SourceMessage
    rejection: Rejection
    future: FutureRecordMetadata | None = None
    dropped: str | None = None
    """Why the letter goes without the original value: the broker refused its size (the value is in the output's
    `_rejected/` files, as every rejection's payload is)."""


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


def _without_value(letter: _Letter, exc: BaseException) -> _Letter:
    """The letter again, without the original value: what makes it too large is the page, not the headers."""
    src = letter.source
    log.warning(
        "the dead letter of %s[%d]@%d is too large (%s): sent without its value, which _rejected/ keeps",
        src.topic,
        src.partition,
        src.offset,
        exc,
    )
    return _Letter(src, letter.rejection, dropped=f"too large for the dead-letter topic: {exc}")


class DeadLetters:
    """Holds rejections per partition until their range is durable, then sends them; `flush()` awaits delivery."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "webr-dead-letters",
        max_request_size: int = 16 << 20,
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            compression_type="gzip",
            linger_ms=20,
            max_request_size=max_request_size,
        )
        self._held: dict[int, list[tuple[SourceMessage, Rejection]]] = defaultdict(list)
        self._sent: list[_Letter] = []
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
            self._send(_Letter(source, rejection))
        return len(ready)

    def _send(self, letter: _Letter) -> None:
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        source = letter.source
        headers = dead_letter_headers(source, letter.rejection)
        if letter.dropped is not None:
            headers.append(("webr.value.dropped", letter.dropped.encode("utf-8", "replace")[:MAX_DETAIL_BYTES]))
        try:
            letter.future = self._producer.send(
                self.topic,
                key=source.key,
                value=source.value if letter.dropped is None else None,
                headers=headers,
                timestamp_ms=source.timestamp_ms,
            )
        except MessageSizeTooLargeError as exc:  # over the producer's max_request_size
            if letter.dropped is None:
                return self._send(_without_value(letter, exc))
            letter.future = None
        except KafkaError:  # no metadata for the topic yet (the broker is away): sent again by the next flush
            letter.future = None
        self._sent.append(letter)

    def discard(self, partitions: set[int]) -> None:
        """Forget held rejections of revoked partitions: their next owner reprocesses them."""
        for partition in partitions:
            self._held.pop(partition, None)

    async def flush(self) -> int:
        """Wait until every sent dead letter is acknowledged.

        Raises `DeadLetterError` if some were not (the broker is away): those are sent again, and the caller
        commits nothing until a later `flush()` succeeds; `UndeliverableDeadLetter` if the topic refuses one for
        good (retrying cannot help: the consumer stops). A letter too large for the topic goes again without its
        value (header `webr.value.dropped`).
        """
        from kafka.errors import MessageSizeTooLargeError

        async with self._flushing:
            if not self._sent:
                return 0
            sent, self._sent = self._sent, []
            await asyncio.get_running_loop().run_in_executor(None, self._producer.flush)
            failed = [letter for letter in sent if letter.future is None or not letter.future.succeeded()]
            self.delivered += len(sent) - len(failed)
            if not failed:
                return len(sent)
            refused: list[BaseException] = []
            for letter in failed:
                exc = letter.future.exception if letter.future is not None else None
                if isinstance(exc, MessageSizeTooLargeError) and letter.dropped is None:
                    letter = _without_value(letter, exc)  # the broker's limit is below the producer's
                elif exc is not None and not getattr(exc, "retriable", False):
                    refused.append(exc)
                self._send(letter)
            if refused:
                raise UndeliverableDeadLetter(f"{self.topic} refuses dead letters for good: {refused[0]!r}")
            first = failed[0].future.exception if failed[0].future is not None else "not sent"
            raise DeadLetterError(f"{len(failed)} dead letters not delivered to {self.topic}: {first}")

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the producer, waiting at most `timeout_s` for what it still holds (what matters was awaited by
        `flush()` before the offsets that cover it were committed)."""
        from kafka.errors import KafkaError

        try:
            self._producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("dead-letter producer close failed: %s", exc)
