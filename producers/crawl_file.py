"""One crawl file to Kafka, in file order, in Kafka transactions, with progress recorded only for what was committed.

`FileRun` sends a file with its own transactional producer (one `transactional_id` per file and topic), so a run
taking the file over fences every earlier one before it looks at the topic (producers.recovery). Records resolve
strictly in file order: a dropped record at once, a sent one when Kafka acknowledges it. Every `CHECKPOINT_EVERY`
records or `CHECKPOINT_SECONDS` the run waits for every acknowledgement, commits the transaction and only then
gives the state store, in one SQLite transaction, the file's new offset, the dedup keys of the committed documents
and the per-partition offsets from which a resumed run must look for messages sent after that checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError, ProducerFencedError
from kafka.producer.future import FutureRecordMetadata
from tqdm import tqdm

from producers.crawl_metrics import CrawlMetrics
from producers.files import make_producer
from producers.language import LanguageIdentifier
from producers.pages import PageOptions, text_key, to_page, url_key
from producers.recovery import (
    FILE_HEADER,
    POSITION_HEADER,
    RECORD_HEADER,
    SentKey,
    end_offsets,
    sent_records,
    transactional_id,
)
from producers.settings import CrawlSettings
from producers.state import FileProgress, StateStore
from producers.warc_records import CrawlRecord, Item, RecordError, iter_warc

log = logging.getLogger("producers.crawl")

CHECKPOINT_EVERY = 500
CHECKPOINT_SECONDS = 2.0


class DeliveryError(Exception):
    """Kafka refused a message or a commit after the client's own retries: the run stops, progress stays before it
    (the open transaction is aborted when the file is next taken up)."""


class FileTakenOver(Exception):
    """Another producer holds the file's lease or fenced this run's transactional id: stop it, record nothing."""


@dataclass(slots=True)
class CrawlSummary:
    """What one run did; printed as one JSON line on stdout."""

    topic: str
    files: int = 0
    files_already_done: int = 0
    records: int = 0
    produced: int = 0
    recovered: int = 0
    skipped_record_types: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    failed_files: int = 0
    seconds: float = 0.0

    def count(self, table: dict[str, int], reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1


@dataclass(slots=True)
class _Entry:
    """One record in file order: resolved at once (dropped) or when its send is acknowledged."""

    next_offset: int
    future: FutureRecordMetadata | None = None
    keys: tuple[tuple[str, bytes], ...] = ()
    found_at: tuple[int, int] | None = None
    """(partition, offset) of a record found sent by an earlier run."""


@dataclass
class CrawlContext:
    """Everything a file run needs, built once per process."""

    settings: CrawlSettings
    store: StateStore
    langid: LanguageIdentifier
    options: PageOptions
    summary: CrawlSummary
    metrics: CrawlMetrics
    dedup: frozenset[str]
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    stopping: bool = False


class FileRun:
    """Produce one file from its recorded progress on; `run()` returns True when the file is complete."""

    def __init__(self, ctx: CrawlContext, path: Path, key: str | None = None) -> None:
        """`key` names the file in the state store and the message headers (default: its absolute path)."""
        self.ctx = ctx
        self.path = path
        self.key = key or str(path.resolve())
        self.size = path.stat().st_size
        self.pending: deque[_Entry] = deque()
        self.in_flight: set[tuple[str, bytes]] = set()
        self.acked_keys: list[tuple[str, bytes]] = []
        self.acked = 0
        self.unsettled: dict[int, int] = {}
        """Per partition, past the messages of records resolved since `next_offset` last moved."""
        self.progress: FileProgress | None = None
        self.producer: KafkaProducer | None = None
        self.last_checkpoint = time.monotonic()
        self.resolved_since = 0

    def run(self) -> bool:
        """Produce the file if no other producer holds it: True when it is complete (now or before)."""
        ctx = self.ctx
        if not ctx.store.claim(self.key, ctx.owner, ctx.settings.claim_ttl_s):
            return False
        try:
            return self._run_claimed()
        except FileTakenOver as exc:
            log.warning("%s", exc)
            return False
        finally:
            ctx.store.release(self.key, ctx.owner)

    def _run_claimed(self) -> bool:
        ctx = self.ctx
        kafka = ctx.settings.kafka
        progress = ctx.store.progress(self.key)
        if progress is not None and progress.done:
            ctx.summary.files_already_done += 1
            return True
        ctx.summary.files += 1
        self.producer = make_producer(kafka, transactional_id(kafka.topic, self.key), ctx.settings.delivery_timeout_s)
        try:
            # Fences every earlier run of this file: the broker aborts its open transaction and refuses its requests
            # from now on, so what the scan below finds is all it will ever have sent.
            self.producer.init_transactions()
            return self._produce(progress)
        except KafkaError as exc:
            raise self._failed(exc) from exc
        finally:
            self.producer.close()

    def _produce(self, progress: FileProgress | None) -> bool:
        ctx = self.ctx
        kafka = ctx.settings.kafka
        assert self.producer is not None
        recovered: dict[SentKey, tuple[int, int]] = {}
        if progress is None:
            progress = FileProgress(self.key, self.size, 0, False, end_offsets(kafka.bootstrap_servers, kafka.topic))
            # Recorded before the first send, so that a run killed before its first checkpoint is resumed by a scan.
            self._record(progress, ())
        else:
            recovered = sent_records(
                kafka.bootstrap_servers, kafka.topic, progress.scan_from, self.key, ctx.settings.scan_timeout_s
            )
            log.warning(
                "%s: resuming at byte %d; %d records found sent", self.path, progress.next_offset, len(recovered)
            )
        self.progress = progress
        bar = tqdm(
            total=self.size,
            initial=progress.next_offset,
            unit="B",
            unit_scale=True,
            desc=self.path.name,
            disable=None if ctx.settings.progress else True,
        )
        try:
            self.producer.begin_transaction()
            for item in iter_warc(self.path, progress.next_offset):
                if ctx.stopping:
                    break
                ctx.summary.records += 1
                self.pending.append(self._handle(item, recovered))
                self._resolve(bar, block=False)
                if (
                    self.resolved_since >= CHECKPOINT_EVERY
                    or time.monotonic() - self.last_checkpoint > CHECKPOINT_SECONDS
                ):
                    self._checkpoint(bar, done=False)
                    self.producer.begin_transaction()
            # SIGTERM included: what was sent is committed and recorded, a rerun resumes after it.
            done = not ctx.stopping
            self._checkpoint(bar, done=done)
            if done:
                ctx.metrics.files.inc()
            return done
        finally:
            bar.close()

    def _failed(self, exc: KafkaError) -> Exception:
        """What a Kafka error means for this run: fenced (or the lease gone), another producer has the file and this
        run records nothing more; otherwise the run stops, and the file's next run aborts the open transaction."""
        ctx = self.ctx
        if isinstance(exc, ProducerFencedError) or not ctx.store.renew(self.key, ctx.owner, ctx.settings.claim_ttl_s):
            return FileTakenOver(f"{self.path}: taken over by another producer ({exc}); leaving the file to it")
        return DeliveryError(f"{self.path}: {exc}")

    def _handle(self, item: Item, recovered: dict[SentKey, tuple[int, int]]) -> _Entry:
        ctx = self.ctx
        if isinstance(item, RecordError):
            ctx.summary.count(ctx.summary.unreadable, item.reason)
            ctx.metrics.record("unreadable", item.reason)
            print(f"{self.path}: unreadable record at {item.location}: {item.reason}: {item.detail}", file=sys.stderr)
            return _Entry(item.next_offset)
        if not isinstance(item, CrawlRecord):
            ctx.summary.skipped_record_types += 1
            ctx.metrics.record("skipped", item.record_type)
            return _Entry(item.next_offset)
        page = to_page(item, ctx.langid, ctx.options)
        if page.document is None:
            return self._drop(item, page.reason or "dropped")
        doc = page.document
        keys = self._dedup_keys(doc.text, doc.url)
        for kind, key in keys:
            if (kind, key) in self.in_flight or ctx.store.seen(kind, key):
                return self._drop(item, f"duplicate_{kind}")
        sent = recovered.get((item.position, item.record_id))
        if sent is not None:
            ctx.summary.recovered += 1
            ctx.metrics.record("recovered", "sent_before_crash")
            # In flight until the next checkpoint records them, as a sent record's keys are: a later record of the
            # file repeating its URL or text is a duplicate of it.
            self.in_flight.update(keys)
            self.acked_keys.extend(keys)
            return _Entry(item.next_offset, found_at=sent)
        headers = [
            (FILE_HEADER, self.key.encode()),
            (RECORD_HEADER, item.record_id.encode()),
            (POSITION_HEADER, item.position.encode()),
        ]
        topic = ctx.settings.kafka.topic
        assert self.producer is not None
        future = self.producer.send(topic, key=doc.doc_id.encode(), value=doc.to_json(), headers=headers)
        self.in_flight.update(keys)
        return _Entry(item.next_offset, future, keys)

    def _dedup_keys(self, text: str, url: str | None) -> tuple[tuple[str, bytes], ...]:
        keys: list[tuple[str, bytes]] = []
        if "url" in self.ctx.dedup and url:
            keys.append(("url", url_key(url)))
        if "text" in self.ctx.dedup:
            keys.append(("text", text_key(text)))
        return tuple(keys)

    def _drop(self, item: CrawlRecord, reason: str) -> _Entry:
        self.ctx.summary.count(self.ctx.summary.dropped, reason)
        self.ctx.metrics.record("dropped", reason)
        return _Entry(item.next_offset)

    def _resolve(self, bar: tqdm, block: bool) -> None:
        """Resolve the head of the queue in file order (all of it when `block`).

        `scan_from` moves past a message only once `next_offset` moved past its record: the records of a gzip member
        all resume at the member's start, so until its last one resolves, a resumed run reads the whole member
        again and its scan must find every message sent from it."""
        progress = self.progress
        assert progress is not None
        while self.pending:
            head = self.pending[0]
            sent_at = head.found_at
            if head.future is not None:
                if not head.future.is_done and not block:
                    break
                metadata = head.future.get(timeout=self.ctx.settings.delivery_timeout_s)
                self.acked += 1
                sent_at = (metadata.partition, metadata.offset)
                self.acked_keys.extend(head.keys)
            if sent_at is not None:
                partition, offset = sent_at
                self.unsettled[partition] = max(self.unsettled.get(partition, 0), offset + 1)
            self.pending.popleft()
            if head.next_offset > progress.next_offset:
                bar.update(head.next_offset - progress.next_offset)
                progress.next_offset = head.next_offset
                for partition, after in self.unsettled.items():
                    progress.scan_from[partition] = max(progress.scan_from.get(partition, 0), after)
                self.unsettled.clear()
            self.resolved_since += 1

    def _checkpoint(self, bar: tqdm, done: bool) -> None:
        """Commit the transaction, then record it. A crash between the two leaves committed records past the
        recorded progress, which the rerun's scan finds; a crash before the commit leaves the transaction open,
        and the rerun's fencing aborts it."""
        assert self.progress is not None and self.producer is not None
        ctx = self.ctx
        self.producer.flush()
        self._resolve(bar, block=True)
        if not ctx.store.renew(self.key, ctx.owner, ctx.settings.claim_ttl_s):
            raise FileTakenOver(f"{self.path}: lease lost to another producer (stalled longer than --claim-ttl-s)")
        self.producer.commit_transaction()
        ctx.summary.produced += self.acked
        ctx.metrics.record("produced", "", self.acked)
        self.progress.done = done
        self._record(self.progress, self.acked_keys)
        self.in_flight.difference_update(self.acked_keys)
        self.acked_keys = []
        self.acked = 0
        self.resolved_since = 0
        self.last_checkpoint = time.monotonic()

    def _record(self, progress: FileProgress, keys: Sequence[tuple[str, bytes]]) -> None:
        if not self.ctx.store.checkpoint(progress, keys, self.ctx.owner):
            raise FileTakenOver(f"{self.path}: lease lost to another producer before its progress was recorded")
