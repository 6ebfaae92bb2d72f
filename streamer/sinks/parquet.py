"""Rolled Parquet files with deterministic keys: the Kafka Connect S3 sink's delivery design.

Outcomes are `add()`ed per (stream, partition) in offset order, after the partition was `open()`ed with the
consumer-group generation that owns it. A file covers a contiguous offset range that starts where the previous
durable file ended, and is named after its range and that generation (`core.keys.file_name`): a file run
replayed after a crash rewrites the same keys, and a writer that lost its partition cannot overwrite its next
owner's files, only leave files that readers recognise as superseded. Files roll on input-record count or
record time, never on wall clock. Every flush writes the rows file and the rejections file of the range, or
removes a stale one left by an earlier attempt, so a range never keeps the other kind from a replay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    stop_when_event_set,
    wait_exponential_jitter,
)

from core.keys import REJECTED_DIR, date_dir, file_name
from core.outcomes import Outcome, PairRow, Rejection
from core.schema import pairs_table, rejected_table
from core.storage import Location

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ROLL_RECORDS = 1000
"""Input records per file: small enough that a crash redoes little LLM work, large enough for Parquet."""


class SinkWriteError(OSError):
    """The object store refused a write even after retries; nothing in the range may be committed."""


@dataclass(frozen=True, slots=True)
class RollPolicy:
    """When a partition's open file is closed: after `max_records` input offsets, or once records span
    `max_record_time_ms` of record time (Kafka timestamps), whichever comes first."""

    max_records: int = DEFAULT_ROLL_RECORDS
    max_record_time_ms: int | None = None


@dataclass(frozen=True, slots=True)
class WrittenFile:
    """A durable offset range: the caller may commit up to `end_offset` (exclusive) once this exists."""

    stream: str
    partition: int
    start_offset: int
    end_offset: int
    rows: int
    rejections: int
    keys: tuple[str, ...]
    bytes_written: int


# Outcomes are turned into Arrow this many at a time as they arrive, so a flush converts at most this many: the
# first conversion of a process also pays pyarrow's one-off set-up (it imports pandas, 0.3-0.7 s), which then
# falls in the middle of a run instead of into the flush that ends it, and a file's Python objects are freed
# as it fills.
_CONVERT_EVERY = 32


@dataclass(slots=True)
class _Converted(Generic[T]):
    """Outcomes of one kind for one file: converted to Arrow `_CONVERT_EVERY` at a time, the rest still pending."""

    to_table: Callable[[Sequence[T]], pa.Table]
    tables: list[pa.Table] = field(default_factory=list)
    pending: list[T] = field(default_factory=list)
    count: int = 0

    def append(self, outcome: T) -> None:
        self.pending.append(outcome)
        self.count += 1
        if len(self.pending) >= _CONVERT_EVERY:
            self.tables.append(self.to_table(self.pending))
            self.pending = []

    def table(self) -> pa.Table | None:
        """All of them as one table (None when there are none)."""
        if self.pending:
            self.tables.append(self.to_table(self.pending))
            self.pending = []
        return pa.concat_tables(self.tables) if self.tables else None


@dataclass(slots=True)
class _OpenFile:
    generation: int
    start_offset: int
    next_offset: int
    first_ts_ms: int | None
    rows: _Converted[PairRow] = field(default_factory=lambda: _Converted(pairs_table))
    rejections: _Converted[Rejection] = field(default_factory=lambda: _Converted(rejected_table))

    @property
    def records(self) -> int:
        return self.next_offset - self.start_offset


class ParquetSink:
    """Buffers outcomes per partition and writes each closed range as one rows file and one rejections file."""

    def __init__(
        self,
        location: Location,
        policy: RollPolicy = RollPolicy(),
        *,
        compression: str = "zstd",
        retry_deadline_s: float | None = 300.0,
        on_written: Callable[[WrittenFile], None] | None = None,
    ) -> None:
        self.location = location
        self.policy = policy
        self.compression = compression
        self.retry_deadline_s = retry_deadline_s
        self.on_written = on_written
        self._open: dict[tuple[str, int], _OpenFile] = {}
        self._generation: dict[tuple[str, int], int] = {}
        self._abort = threading.Event()

    def setup(self) -> None:
        """Check the output is reachable before any work is done (fail fast on a wrong bucket or path)."""
        if self.location.is_local:
            self.location.fs.create_dir(self.location.root, recursive=True)
        else:
            info = self.location.fs.get_file_info(self.location.root.split("/", 1)[0])
            if info.type == pafs.FileType.NotFound:
                raise SinkWriteError(f"bucket of {self.location.uri!r} does not exist")

    def open(self, stream: str, partition: int, generation: int) -> None:
        """Take a partition to write, as its owner of `generation` (0 for a file run), which names its files."""
        self._open.pop((stream, partition), None)
        self._generation[(stream, partition)] = generation

    def add(self, stream: str, partition: int, offset: int, outcome: Outcome) -> list[WrittenFile]:
        """Add the outcome of input record `offset`; returns the files this closed (possibly none)."""
        key = (stream, partition)
        if key not in self._generation:
            raise KeyError(f"{stream}[{partition}] was not opened")
        ts = outcome.ref.timestamp_ms
        written: list[WrittenFile] = []
        current = self._open.get(key)
        if current is not None and self._time_to_roll(current, ts):
            written.append(self._write(stream, partition, current))
            current = None
        if current is None:
            current = self._open[key] = _OpenFile(self._generation[key], offset, offset, ts)
        if offset != current.next_offset:
            raise ValueError(f"{stream}[{partition}]: offset {offset} added after {current.next_offset - 1}")
        current.next_offset = offset + 1
        if isinstance(outcome, PairRow):
            current.rows.append(outcome)
        else:
            current.rejections.append(outcome)
        if current.records >= self.policy.max_records:
            written.append(self._write(stream, partition, current))
        return written

    def skip(self, stream: str, partition: int, offset: int) -> None:
        """Account for an offset that carries no document (a Kafka transaction marker, a compacted gap)."""
        current = self._open.get((stream, partition))
        if current is not None and offset >= current.next_offset:
            current.next_offset = offset + 1

    def _time_to_roll(self, current: _OpenFile, ts_ms: int | None) -> bool:
        limit = self.policy.max_record_time_ms
        if limit is None or ts_ms is None or current.first_ts_ms is None:
            return False
        return ts_ms - current.first_ts_ms >= limit

    def flush(self, partitions: Sequence[tuple[str, int]] | None = None) -> list[WrittenFile]:
        """Write the open files of `partitions` (all when None), making everything added so far durable."""
        keys = list(self._open) if partitions is None else [k for k in partitions if k in self._open]
        return [self._write(stream, partition, self._open[(stream, partition)]) for stream, partition in keys]

    def discard(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Forget buffered outcomes and the partitions (revoked: the next owner reprocesses their records)."""
        for key in partitions:
            self._open.pop(key, None)
            self._generation.pop(key, None)

    def buffered_records(self) -> int:
        return sum(f.records for f in self._open.values())

    def _write(self, stream: str, partition: int, current: _OpenFile) -> WrittenFile:
        name = file_name(stream, partition, current.start_offset, current.next_offset, current.generation)
        date = date_dir(current.first_ts_ms)
        rows_key = self.location.path(stream, *date, name)
        rejected_key = self.location.path(REJECTED_DIR, stream, *date, name)
        meta = {
            "webr.stream": stream,
            "webr.partition": str(partition),
            "webr.start_offset": str(current.start_offset),
            "webr.end_offset": str(current.next_offset),
            "webr.generation": str(current.generation),
        }
        keys: list[str] = []
        size = 0
        for key, table in (
            (rows_key, current.rows.table()),
            (rejected_key, current.rejections.table()),
        ):
            if table is None:
                self._delete_if_present(key)
            else:
                size += self._put(key, table.replace_schema_metadata({**(table.schema.metadata or {}), **meta}))
                keys.append(key)
        self._open.pop((stream, partition), None)
        written = WrittenFile(
            stream,
            partition,
            current.start_offset,
            current.next_offset,
            current.rows.count,
            current.rejections.count,
            tuple(keys),
            size,
        )
        log.info(
            "wrote offsets %d..%d of %s[%d]: %d rows, %d rejected",
            current.start_offset,
            current.next_offset - 1,
            stream,
            partition,
            written.rows,
            written.rejections,
        )
        if self.on_written is not None:
            self.on_written(written)
        return written

    def _put(self, key: str, table: pa.Table) -> int:
        """Serialise in memory, then publish atomically: rename on a local disk, one object PUT on S3."""
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression=self.compression)
        data = buf.getvalue()
        self._with_retry(self.location.publish, key, data)
        return data.size

    def _delete_if_present(self, key: str) -> None:
        def delete() -> None:
            if self.location.fs.get_file_info(key).type != pafs.FileType.NotFound:
                self.location.fs.delete_file(key)

        self._with_retry(delete)

    def abort_retries(self) -> None:
        """Make a write that is retrying an unavailable store give up now (thread-safe; for shutdown).

        With `retry_deadline_s=None` writes retry until this is called: a streaming consumer waits out an
        object-store outage, committing nothing meanwhile, and gives up only when it is told to stop.
        """
        self._abort.set()

    def _with_retry(self, fn: Callable[..., object], *args: object) -> None:
        deadline = stop_never if self.retry_deadline_s is None else stop_after_delay(self.retry_deadline_s)
        retrying = retry(
            retry=retry_if_exception_type(OSError),
            wait=wait_exponential_jitter(multiplier=0.5, max=30),
            stop=deadline | stop_when_event_set(self._abort),
            sleep=self._abort.wait,
            before_sleep=lambda rs: log.warning(
                "object store write failed (attempt %d), retrying: %s", rs.attempt_number, rs.outcome.exception()
            ),
            reraise=True,
        )
        try:
            retrying(fn)(*args)
        except OSError as exc:
            raise SinkWriteError(f"could not write to {self.location.uri}: {exc}") from exc
