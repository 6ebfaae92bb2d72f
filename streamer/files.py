"""File runs: one JSON/JSONL file in, rolled Parquet out, through the same `Pipeline` as Kafka runs.

The file is a one-partition stream whose offsets are record positions, so ordering, dedup, rejections, metrics
and progress are the Kafka run's own, and a file run's object keys are deterministic: running the same input
again rewrites (and, at the end, prunes) exactly its own files and nobody else's. A rerun first withdraws the
earlier run's marker, so readers take none of the stream's files until it completes (with another roll size its
files overlap the earlier ones until those are pruned). What differs is at the edges:
the source is the file, rejections go to `_rejected/` only (no dead-letter topic), and there are no offsets to
commit: the run is done when every record has an outcome in a durable file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from prometheus_client import CollectorRegistry

from core.exceptions import InvalidRecord
from core.keys import FILE_RUN_GENERATION, list_outputs
from core.markers import advance_marker, withdraw_markers
from core.records import Document, iter_file
from core.storage import Location
from streamer.engine import Engine
from streamer.metrics import ConsumerMetrics, RunSummary
from streamer.pipeline import NoDeadLetters, Pipeline
from streamer.settings import ConsumeSettings
from streamer.sinks.parquet import ParquetSink, WrittenFile

log = logging.getLogger(__name__)

PARTITION = 0
"""A file is one partition."""


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A record of the file as the pipeline takes it (a `pipeline.Record`). It is parsed while the file is read
    (a JSON array is streamed, not re-read per record), so it carries its document or the reason it has none."""

    offset: int
    value: bytes
    parsed: Document | InvalidRecord
    key: bytes | None = None
    timestamp: int | None = None


def parse_file_record(record: FileRecord) -> Document:
    if isinstance(record.parsed, InvalidRecord):
        raise record.parsed
    return record.parsed


def read_records(path: str) -> Iterator[FileRecord]:
    """The file's records in order; `value` is the input record as written (a rejection's payload)."""
    for rec in iter_file(path):
        parsed = rec.document if rec.document is not None else rec.error
        assert parsed is not None
        yield FileRecord(rec.position, rec.raw, parsed)


def file_stream_name(path: str) -> str:
    """`file-<stem>-<content digest>`: the same content always maps to the same object keys."""
    digest = hashlib.blake2b(digest_size=6)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).name.split(".")[0])[:40] or "input"
    return f"file-{stem}-{digest.hexdigest()}"


def count_records(path: str) -> int:
    """A quick pass for the progress bar's total (and so its ETA)."""
    return sum(1 for _ in iter_file(path))


async def run_file(
    settings: ConsumeSettings,
    engine: Engine,
    on_progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Process the run's source into its output; returns once every record has an outcome on disk."""
    source, output = settings.run.source, settings.sink.output
    assert source is not None
    location = settings.storage.open(output, create=True)
    stream = file_stream_name(source)
    written: list[WrittenFile] = []
    sink = ParquetSink(location, settings.roll_policy(), on_written=written.append)
    sink.setup()
    if withdraw_markers(location, stream):
        # Until this run completes, its files and an earlier run's would both sit below that run's marker.
        log.info("%s was processed before: its output is withdrawn until this run completes", source)
    metrics = ConsumerMetrics(CollectorRegistry())
    pipeline = Pipeline[FileRecord](
        stream,
        engine.processor,
        sink,
        NoDeadLetters(),
        metrics,
        max_in_flight=settings.in_flight_docs,
        dedup=engine.dedup,
        parse=parse_file_record,
    )
    log.info("reading %s as stream %s into %s", source, stream, output)
    try:
        await _drain(pipeline, read_records(source), settings.in_flight_docs, on_progress)
        async with pipeline.lock:
            durable = await pipeline.checkpoint(flush=True)
        await pipeline.deliver_dead_letters()
        await pipeline.finalize(FileRunCommitter(location, stream, written), durable)
    except BaseException:
        await pipeline.close_partitions([PARTITION])
        raise
    finally:
        pipeline.close()
    return metrics.summary


@dataclass(frozen=True, slots=True)
class FileRunCommitter:
    """The `Committer` of a complete file run: no offsets to commit (the files are the record); the marker says
    the whole input is final, once the files of an earlier run of the same input that this one did not rewrite
    are gone, so readers (the trainer's snapshot) never take a stale file below it."""

    location: Location
    stream: str
    written: list[WrittenFile]

    async def commit(self, offsets: dict[int, int]) -> dict[int, int]:
        return offsets

    def mark(self, committed: dict[int, int]) -> None:
        _prune_stale(self.location, self.stream, self.written)
        for partition, offset in committed.items():
            advance_marker(self.location, self.stream, partition, offset)


async def _drain(
    pipeline: Pipeline[FileRecord],
    records: Iterator[FileRecord],
    chunk: int,
    on_progress: Callable[[RunSummary], None] | None,
) -> None:
    """Feed the file to the pipeline a chunk at a time, whenever its backlog is empty, until all is emitted."""
    pipeline.open(PARTITION, 0, FILE_RUN_GENERATION)
    more = True
    while True:
        async with pipeline.lock:
            await pipeline.emit()
        if on_progress is not None:
            on_progress(pipeline.metrics.summary)
        if more and PARTITION in pipeline.fetchable():
            batch = list(islice(records, chunk))
            more = bool(batch)
            pipeline.accept(PARTITION, batch)
            if not more:
                pipeline.processor.drain()
        pipeline.dispatch()
        if not more and not pipeline.busy:
            return
        if pipeline.running and not (more and PARTITION in pipeline.fetchable()):
            # Nothing to read now: wait for a document to finish (what needs no work is emitted at once).
            await pipeline.wake.wait()
            pipeline.wake.clear()


def _prune_stale(location: Location, stream: str, written: list[WrittenFile]) -> None:
    """Remove files of an earlier run of the same input that this complete run did not rewrite."""
    keep = {key for f in written for key in f.keys}
    for f in list_outputs(location, stream, temporaries=location.is_local):
        if f.path not in keep:
            log.info("removing %s, left by an earlier run of the same input", f.path)
            location.fs.delete_file(f.path)
