"""File runs: one JSON/JSONL file in, rolled Parquet out, every record accounted for.

The file is treated as a one-partition stream whose offsets are record positions, so file runs and Kafka runs
share the processor, the ordered window and the sink, and a file run's object keys are deterministic: running
the same input again rewrites (and, at the end, prunes) exactly its own files and nobody else's.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from consumers.llm.types import ChatClient
from consumers.outcomes import Outcome, PairRow, Rejection, SourceRef
from consumers.webr.processor import DocumentProcessor
from producers.records import iter_file
from streamer.settings import ConsumeSettings
from streamer.sinks.parquet import ParquetSink, WrittenFile, list_outputs
from streamer.storage import Location, resolve
from streamer.window import OrderedWindow

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a finished run did; printed at the end and asserted on by tests."""

    records: int = 0
    rows: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    files: list[WrittenFile] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def count(self, outcome: Outcome) -> None:
        self.records += 1
        if isinstance(outcome, PairRow):
            self.rows += 1
        else:
            self.rejected[outcome.reason] += 1
        usage = outcome.usage
        self.calls += usage.calls
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost_usd += usage.cost_usd or 0.0

    def render(self) -> str:
        elapsed = time.monotonic() - self.started
        reasons = ", ".join(f"{r}={n}" for r, n in self.rejected.most_common()) or "none"
        return (
            f"done: {self.records} records -> {self.rows} rows, {sum(self.rejected.values())} rejected ({reasons}); "
            f"{self.calls} LLM calls, {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens, "
            f"${self.cost_usd:.4f}; {len(self.files)} files; {elapsed:.1f}s"
        )


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
    llm: ChatClient,
    on_progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Process `settings.source` into `settings.output`; returns once every record has an outcome on disk."""
    assert settings.source is not None
    location = resolve(settings.output, s3_endpoint_url=settings.s3_endpoint_url, create=True)
    stream = file_stream_name(settings.source)
    sink = ParquetSink(location, settings.roll_policy())
    sink.setup()
    processor = DocumentProcessor(llm, settings.webr())
    window = OrderedWindow(settings.in_flight_docs)
    summary = RunSummary()
    log.info("reading %s as stream %s into %s", settings.source, stream, settings.output)

    raw: dict[int, bytes] = {}  # original records of the documents in the window, for rejections' payload

    def emit() -> None:
        for offset, outcome in window.pop_ready():
            admitted = processor.admit(outcome)
            original = raw.pop(offset, None)
            if isinstance(admitted, Rejection):
                admitted = admitted.with_payload(original)
            summary.count(admitted)
            summary.files.extend(sink.add(stream, 0, offset, admitted))
            if on_progress is not None:
                on_progress(summary)

    try:
        for rec in iter_file(settings.source):
            while not window.has_room:
                await window.wait()
                emit()
            ref = SourceRef(stream, 0, rec.position)
            if rec.document is None:
                assert rec.error is not None
                log.warning("rejected %s of %s: %s", rec.location, settings.source, rec.error)
                window.push(rec.position, processor.reject_invalid(rec.error, ref, rec.raw))
            else:
                raw[rec.position] = rec.raw
                window.push(rec.position, processor.process(rec.document, ref, seq=rec.position))
            emit()
        while len(window):
            await window.wait()
            emit()
    except BaseException:
        await window.cancel()
        raise
    summary.files.extend(sink.flush())
    _prune_stale(location, stream, summary.files)
    return summary


def _prune_stale(location: Location, stream: str, written: list[WrittenFile]) -> None:
    """Remove files of an earlier run of the same input that this complete run did not rewrite."""
    keep = {key for f in written for key in f.keys}
    for f in list_outputs(location, stream, temporaries=location.is_local):
        if f.path not in keep:
            log.info("removing %s, left by an earlier run of the same input", f.path)
            location.fs.delete_file(f.path)
