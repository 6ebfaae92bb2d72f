"""The one path of every run: backlog -> ordered window (the engine) -> dedup -> sink -> commit offsets.

Kafka runs (`streamer.kafka.runtime`) and file runs (`streamer.files`) both drive a `Pipeline`: a source feeds
records per partition with `accept()`, the driver calls `dispatch()`, `emit()` and `checkpoint()`, and commits
what `checkpoint()` names (a file run has nothing to commit). Ordering, dedup, rejections with their payload,
dead letters and metrics (hence progress) happen here and nowhere else.

Everything here runs on the asyncio loop; blocking sink I/O goes to one thread so writes stay in order. The
`lock` serialises what touches the sink and the dedup stage (emitting, checkpoints, rebalances): the runtime
holds it around those calls and never around a call that needs the consumer thread.

Commit order (Quix's checkpoint, Kafka Connect's S3 sink), driven by the runtime: `checkpoint()` flushes the sink
and names the committable offsets (never past the end of a durable file), `deliver_dead_letters()` awaits the
dead letters of the written ranges, and only then does `finalize()` commit them through the run's `Committer`
and write the commit markers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from core.exceptions import InvalidRecord
from core.outcomes import Outcome, Rejection, SourceRef
from core.records import Document, parse_message
from streamer.engine import Dedup, Processor
from streamer.metrics import ConsumerMetrics
from streamer.recovery import committed_rows, dedup_ranges
from streamer.sinks.parquet import ParquetSink, WrittenFile
from streamer.threads import DaemonExecutor
from streamer.window import OrderedWindow

log = logging.getLogger(__name__)

T = TypeVar("T")


class Record(Protocol):
    """One input record of a partition: a Kafka `ConsumerRecord`, or a record of a file (`streamer.files`)."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> int | None: ...


R = TypeVar("R", bound=Record)


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """The parts of a consumed record a dead letter needs to reproduce it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


def parse_value(record: Record) -> Document:
    """A Kafka record's document: its value is the JSON object (raises `InvalidRecord`)."""
    return parse_message(record.value)


class DeadLetterQueue(Protocol):
    """Where rejections go besides `_rejected/` (`streamer.kafka.deadletters.DeadLetters`, or `NoDeadLetters`)."""

    def hold(self, source: SourceMessage, rejection: Rejection) -> None: ...

    def release(self, partition: int, end_offset: int) -> int: ...

    def discard(self, partitions: set[int]) -> None: ...

    async def flush(self) -> int: ...


class Committer(Protocol):
    """What makes a checkpoint final, once `checkpoint()` named the offsets and their dead letters are delivered:
    a Kafka run commits the group's offsets and then writes the commit markers (`streamer.kafka.runtime`); a file
    run has nothing to commit and writes its marker once the whole input is in durable files (`streamer.files`)."""

    async def commit(self, offsets: dict[int, int]) -> dict[int, int]:
        """Commit `offsets` (partition -> next offset to read); returns those committed, raises if it failed."""
        ...

    def mark(self, committed: dict[int, int]) -> None:
        """Record committed offsets for the output's readers (commit markers); blocking, run on the sink thread."""
        ...


class NoDeadLetters:
    """File runs: rejections are in the output's `_rejected/` files only."""

    def hold(self, source: SourceMessage, rejection: Rejection) -> None:
        pass

    def release(self, partition: int, end_offset: int) -> int:
        return 0

    def discard(self, partitions: set[int]) -> None:
        pass

    async def flush(self) -> int:
        return 0


@dataclass(slots=True)
class PartitionState(Generic[R]):
    """One owned partition. Offsets: fetched < `next_fetch`; in files < `durable`; committed < `committed`."""

    partition: int
    window: OrderedWindow
    next_fetch: int
    durable: int
    committed: int
    backlog: deque[R] = field(default_factory=deque)
    sources: dict[int, SourceMessage] = field(default_factory=dict)
    position: int | None = None
    """The consumer's fetch position, reported with `highwater` by a poll that could fetch this partition."""
    highwater: int | None = None
    """The partition's end offset from a fetch since it was opened; None until one came back."""

    @property
    def at_end(self) -> bool:
        """Read to the end offset the broker last reported, with nothing fetched left to process."""
        return (
            self.highwater is not None
            and self.position is not None
            and self.position >= self.highwater
            and not self.backlog
            and not len(self.window)
        )

    @property
    def behind(self) -> bool:
        """Known to have records to process (fetched or not)."""
        return bool(self.backlog or len(self.window)) or (
            self.highwater is not None and self.position is not None and self.position < self.highwater
        )

    @property
    def all_committed(self) -> bool:
        """Everything fetched has an outcome in a committed file."""
        return self.committed >= self.next_fetch and not self.backlog and not len(self.window)


class Pipeline(Generic[R]):
    """The owned partitions of one stream (a topic, or a file) and the path of their records to durable output."""

    def __init__(
        self,
        topic: str,
        processor: Processor,
        sink: ParquetSink,
        dead_letters: DeadLetterQueue,
        metrics: ConsumerMetrics,
        *,
        max_in_flight: int,
        dedup: Dedup,
        parse: Callable[[R], Document] = parse_value,
    ) -> None:
        self.topic = topic
        self.processor = processor
        self.dedup = dedup
        self.parse = parse
        self.sink = sink
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.parts: dict[int, PartitionState[R]] = {}
        self.indexed: dict[int, int] = {}
        """Per partition, the offset below which every admitted row is in the dedup stage."""
        self._unsettled: dict[int, int] = {}
        """Closed partitions whose admitted rows (below the offset) were not all committed yet: unless the commit
        follows (a revocation's), the next recall starts the index over, since the next owner may commit other
        rows for those offsets."""
        self.revoking: set[int] = set()
        """Partitions on their way out (a rebalance's grace period): nothing starts there and nothing of them is
        committed outside the revocation itself."""
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.finished = asyncio.Event()
        """Set whenever a document finishes (for the rebalance grace period; the pump waits on `wake`)."""
        self._seq = 0
        # A daemon thread, so a write retried against a dead store cannot keep a stopping process alive.
        self._io = DaemonExecutor(1, "sink-io")

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking object-store work on the sink thread (one at a time, in submission order)."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def close(self) -> list[str]:
        """Stop the sink thread; returns the calls still running there (abandoned)."""
        running = self._io.running
        self._io.shutdown(wait=False, cancel_futures=True)
        return running

    # -- ownership -------------------------------------------------------------------------------------------

    def open(self, partition: int, position: int, generation: int) -> None:
        """Own `partition` from `position` on, as its owner in the consumer group's `generation`."""
        self.sink.open(self.topic, partition, generation)
        window = OrderedWindow(self.max_in_flight, 4 * self.max_in_flight)
        self.parts[partition] = PartitionState[R](partition, window, position, position, position)
        self.metrics.assigned.set(len(self.parts))
        self.metrics.committed.labels(str(partition)).set(position)

    async def close_partitions(self, partitions: Iterable[int]) -> list[int]:
        """Drop partitions: cancel their running documents, forget buffered output; returns offsets dropped."""
        dropped: list[int] = []
        keys = []
        for p in list(partitions):
            self.revoking.discard(p)
            state = self.parts.pop(p, None)
            if state is None:
                continue
            if self.indexed.get(p, 0) > state.committed:
                self._unsettled[p] = self.indexed[p]
            dropped += await state.window.cancel()
            dropped += [r.offset for r in state.backlog]
            keys.append((self.topic, p))
        self.sink.discard(keys)
        self.dead_letters.discard({p for _, p in keys})
        self.metrics.assigned.set(len(self.parts))
        self.metrics.partitions_gone(p for _, p in keys)
        return dropped

    async def recall_dedup(self, positions: dict[int, int]) -> None:
        """Before partitions open at `positions` (hold `lock`): load the committed rows the dedup stage lacks, and
        start it over if it holds decisions about records that will be processed again."""
        stale = bool(self._unsettled)
        reset, ranges = dedup_ranges({} if stale else self.indexed, positions)
        if reset or stale:
            log.warning("dedup index holds decisions that were never committed: rebuilding it from the output")
            self.dedup.reset()
            self.indexed.clear()
            self._unsettled.clear()
        location = self.sink.location
        rows = await self.io(lambda: list(committed_rows(location, self.topic, ranges))) if ranges else []
        for i, (branch, request, page_hash) in enumerate(rows):
            self.dedup.recall(branch, request, page_hash)
            if i % 256 == 255:
                await asyncio.sleep(0)
        self.indexed.update(positions)
        if rows:
            log.info("dedup index: %d committed rows loaded", len(rows))

    # -- intake ----------------------------------------------------------------------------------------------

    def accept(self, partition: int, records: Sequence[R]) -> int:
        """Queue fetched records of an owned partition (refetched offsets are ignored)."""
        state = self.parts.get(partition)
        if state is None:
            return 0
        fresh = [r for r in records if r.offset >= state.next_fetch]
        if fresh:
            state.backlog.extend(fresh)
            state.next_fetch = fresh[-1].offset + 1
            self.metrics.docs_in.labels(str(partition)).inc(len(fresh))
        return len(fresh)

    def fetchable(self) -> set[int]:
        """Partitions to fetch from: owned ones with nothing waiting for a slot (the rest stay paused)."""
        return {p for p, s in self.parts.items() if not s.backlog and p not in self.revoking}

    def note_ends(self, ends: dict[int, tuple[int | None, int | None]], polled: set[int]) -> None:
        """Record fetch positions and end offsets reported by a poll that could fetch `polled` (only those: a
        partition paused or not yet opened may report a position from before it was sought)."""
        for p, (position, highwater) in ends.items():
            state = self.parts.get(p)
            if state is not None and p in polled:
                state.position, state.highwater = position, highwater

    def running_in(self, partitions: Iterable[int]) -> int:
        return sum(self.parts[p].window.running for p in partitions if p in self.parts)

    @property
    def running(self) -> int:
        return sum(s.window.running for s in self.parts.values())

    @property
    def busy(self) -> bool:
        """Anything fetched but not yet in the sink."""
        return any(s.backlog or len(s.window) for s in self.parts.values())

    def dispatch(self) -> int:
        """Start documents from the backlogs, round robin over partitions, while the in-flight bound allows."""
        started = 0
        progress = True
        while progress and self.running < self.max_in_flight:
            progress = False
            for state in self.parts.values():
                if state.partition in self.revoking:
                    continue
                if state.backlog and state.window.has_room and self.running < self.max_in_flight:
                    self._start(state, state.backlog.popleft())
                    started += 1
                    progress = True
        self.metrics.in_flight.set(self.running)
        self.metrics.backlog.set(sum(len(s.backlog) for s in self.parts.values()))
        return started

    def _start(self, state: PartitionState[R], record: R) -> None:
        ref = SourceRef(self.topic, state.partition, record.offset, record.timestamp)
        state.sources[record.offset] = SourceMessage(
            self.topic, state.partition, record.offset, record.key, record.value, record.timestamp
        )
        try:
            doc = self.parse(record)
        except InvalidRecord as exc:
            log.warning(
                "rejected %s[%d]@%d: %s",
                self.topic,
                state.partition,
                record.offset,
                exc,
                extra={"partition": state.partition, "offset": record.offset, "reason": exc.reason},
            )
            state.window.push(record.offset, self.processor.reject_invalid(exc, ref, record.value))
            self.wake.set()
            return
        self._seq += 1
        state.window.push(record.offset, self._process(doc, ref, self._seq))

    async def _process(self, doc: Document, ref: SourceRef, seq: int) -> Outcome:
        started = time.monotonic()
        try:
            return await self.processor.process(doc, ref, seq=seq)
        finally:
            self.metrics.doc_latency.observe(time.monotonic() - started)
            self.wake.set()
            self.finished.set()

    # -- output (hold `lock`) --------------------------------------------------------------------------------

    async def emit(self, partitions: Iterable[int] | None = None) -> list[WrittenFile]:
        """Move finished outcomes at the head of each window, in offset order, through dedup into the sink."""
        batch: list[tuple[int, int, Outcome]] = []
        for p in list(self.parts if partitions is None else partitions):
            state = self.parts.get(p)
            if state is None:
                continue
            for offset, outcome in state.window.pop_ready():
                admitted = self.dedup.admit(outcome)
                self.indexed[p] = offset + 1
                source = state.sources.pop(offset)
                if isinstance(admitted, Rejection):
                    admitted = admitted.with_payload(source.value)
                    self.dead_letters.hold(source, admitted)
                self.metrics.outcome(admitted)
                batch.append((p, offset, admitted))
        if not batch:
            return []
        written = await self.io(self._add_all, batch)
        self._note(written)
        return written

    def _add_all(self, batch: list[tuple[int, int, Outcome]]) -> list[WrittenFile]:
        written: list[WrittenFile] = []
        for partition, offset, outcome in batch:
            # Offsets without a record (transaction markers, compaction) still belong to the open range.
            self.sink.skip(self.topic, partition, offset - 1)
            written += self.sink.add(self.topic, partition, offset, outcome)
        return written

    def _note(self, written: list[WrittenFile]) -> None:
        for f in written:
            state = self.parts.get(f.partition)
            if state is not None:
                state.durable = max(state.durable, f.end_offset)
            self.dead_letters.release(f.partition, f.end_offset)
            self.metrics.file_written(f.bytes_written)

    async def checkpoint(self, partitions: Iterable[int] | None = None, *, flush: bool) -> dict[int, int]:
        """Make output durable (all buffered output of `partitions` when `flush`) and return the offsets that may
        be committed once `deliver_dead_letters()` has succeeded: per partition, the end of its last durable file.

        Holds the caller's `lock`; the dead letters are awaited after it is released, since a broker that is away
        can take minutes to refuse them and output must keep flowing (or a rebalance be served) meanwhile."""
        if partitions is None:
            partitions = [p for p in self.parts if p not in self.revoking]
        chosen = [p for p in partitions if p in self.parts]
        if flush and chosen:
            self._note(await self.io(self.sink.flush, [(self.topic, p) for p in chosen]))
        return {p: self.parts[p].durable for p in chosen if self.parts[p].durable > self.parts[p].committed}

    async def deliver_dead_letters(self) -> None:
        """Await every dead letter sent so far (those of all durable ranges); raises `DeadLetterError`."""
        sent = await self.dead_letters.flush()
        if sent:
            self.metrics.dead_letters.inc(sent)

    async def finalize(self, committer: Committer, offsets: dict[int, int]) -> dict[int, int]:
        """Commit what `checkpoint()` named (after `deliver_dead_letters()`), then mark it; returns the offsets
        committed. A failed commit raises and leaves everything uncommitted, to be retried."""
        done = await committer.commit(offsets)
        self.committed(done)
        if done:
            await self.io(committer.mark, done)
        return done

    def committed(self, offsets: dict[int, int]) -> None:
        for p, offset in offsets.items():
            state = self.parts.get(p)
            if state is not None:
                state.committed = max(state.committed, offset)
                self.metrics.committed.labels(str(p)).set(offset)  # not for a partition gone: its owner's now
            if offset >= self._unsettled.get(p, offset + 1):
                del self._unsettled[p]  # a revocation's commit, made after the partition was closed

    @property
    def uncommitted(self) -> dict[int, int]:
        """Durable offsets not committed yet (a commit failed, or none was attempted since the last file)."""
        return {p: s.durable for p, s in self.parts.items() if s.durable > s.committed}
