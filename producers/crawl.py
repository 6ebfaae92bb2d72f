"""Produce WARC and WET files of crawled pages to a Kafka topic: each page once, across crashes and restarts.

    python -m producers.crawl --bootstrap-servers HOST:PORT --topic T --state-dir DIR [--languages en,de] FILE...
    python -m producers.crawl --bootstrap-servers HOST:PORT --topic T --state-dir DIR --watch INCOMING/

Each HTML response becomes its main text (producers.extract), gets a language (producers.language), passes the
quality filters (producers.filters) and the exact-dedup check (producers.state), and is sent keyed by `doc_id`
with its URL, crawl date, WARC-Record-ID and language. Every record that is not sent is counted by reason; an
unreadable one is reported with its byte offset and reading goes on.

A file's progress is written to the state store only for records Kafka acknowledged, in file order; a run killed
mid-file resumes after the last acknowledged record, and first reads the topic for messages the dead run sent
but never saw acknowledged (producers.recovery), so no record lands twice. `--watch` polls a directory for new
`*.warc[.gz]` / `*.wet[.gz]` files, takes each once its size and mtime have settled, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata
from prometheus_client import REGISTRY, CollectorRegistry
from tqdm import tqdm

from producers.crawl_metrics import CrawlMetrics
from producers.files import add_producer_arguments, make_producer
from producers.filters import FilterConfig
from producers.language import LanguageIdentifier
from producers.pages import PageOptions, text_key, to_page, url_key, wanted_languages
from producers.recovery import FILE_HEADER, RECORD_HEADER, end_offsets, sent_records
from producers.state import FileProgress, StateStore
from producers.warc_records import CrawlRecord, RecordError, iter_warc
from streamer.kafka.admin import ensure_topic

log = logging.getLogger("producers.crawl")

CRAWL_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
CHECKPOINT_EVERY = 500
CHECKPOINT_SECONDS = 2.0
DEFAULT_FILTERS = FilterConfig()


class DeliveryError(Exception):
    """Kafka refused a message after the producer's own retries: the run stops, progress stays before it."""


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


@dataclass
class CrawlContext:
    """Everything a file run needs, built once per process."""

    args: argparse.Namespace
    producer: KafkaProducer
    store: StateStore
    langid: LanguageIdentifier
    options: PageOptions
    summary: CrawlSummary
    metrics: CrawlMetrics
    dedup: frozenset[str]
    stopping: bool = False


class FileRun:
    """Produce one file from its recorded progress on; `run()` returns True when the file is complete."""

    def __init__(self, ctx: CrawlContext, path: Path) -> None:
        self.ctx = ctx
        self.path = path
        self.key = str(path.resolve())
        self.size = path.stat().st_size
        self.pending: deque[_Entry] = deque()
        self.in_flight: set[tuple[str, bytes]] = set()
        self.acked_keys: list[tuple[str, bytes]] = []
        self.progress: FileProgress | None = None
        self.last_checkpoint = time.monotonic()
        self.resolved_since = 0

    def run(self) -> bool:
        ctx = self.ctx
        progress = ctx.store.progress(self.key)
        if progress is not None and progress.done:
            ctx.summary.files_already_done += 1
            return True
        ctx.summary.files += 1
        recovered: dict[str, tuple[int, int]] = {}
        if progress is None:
            scan_from = end_offsets(ctx.args.bootstrap_servers, ctx.args.topic)
            progress = FileProgress(self.key, self.size, 0, False, scan_from)
        else:
            recovered = sent_records(ctx.args.bootstrap_servers, ctx.args.topic, progress.scan_from, self.key)
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
            disable=None if ctx.args.progress else True,
        )
        try:
            for item in iter_warc(self.path, progress.next_offset):
                if ctx.stopping:
                    break
                ctx.summary.records += 1
                self.pending.append(self._handle(item, recovered))
                self._drain(bar, block=False)
            ctx.producer.flush()
            self._drain(bar, block=True)
            done = not ctx.stopping
            self._checkpoint(done=done)
            if done:
                ctx.metrics.files.inc()
            return done
        finally:
            bar.close()

    def _handle(self, item: Any, recovered: dict[str, tuple[int, int]]) -> _Entry:
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
        if item.record_id in recovered:
            ctx.summary.recovered += 1
            ctx.metrics.record("recovered", "sent_before_crash")
            partition, offset = recovered[item.record_id]
            assert self.progress is not None
            self.progress.scan_from[partition] = max(self.progress.scan_from.get(partition, 0), offset + 1)
            self.acked_keys.extend(keys)
            return _Entry(item.next_offset)
        headers = [(FILE_HEADER, self.key.encode()), (RECORD_HEADER, item.record_id.encode())]
        future = ctx.producer.send(ctx.args.topic, key=doc.doc_id.encode(), value=doc.to_json(), headers=headers)
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

    def _drain(self, bar: tqdm, block: bool) -> None:
        """Resolve the head of the queue in file order; checkpoint now and then."""
        assert self.progress is not None
        while self.pending:
            head = self.pending[0]
            if head.future is not None:
                if not head.future.is_done and not block:
                    break
                try:
                    metadata = head.future.get(timeout=self.ctx.args.delivery_timeout_s)
                except Exception as exc:
                    self._checkpoint(done=False)
                    raise DeliveryError(f"{self.path}: send failed: {exc}") from exc
                self.ctx.summary.produced += 1
                self.ctx.metrics.record("produced", "")
                partition = metadata.partition
                self.progress.scan_from[partition] = max(self.progress.scan_from.get(partition, 0), metadata.offset + 1)
                self.acked_keys.extend(head.keys)
            self.pending.popleft()
            if head.next_offset > self.progress.next_offset:
                bar.update(head.next_offset - self.progress.next_offset)
                self.progress.next_offset = head.next_offset
            self.resolved_since += 1
        if self.resolved_since >= CHECKPOINT_EVERY or time.monotonic() - self.last_checkpoint > CHECKPOINT_SECONDS:
            self._checkpoint(done=False)

    def _checkpoint(self, done: bool) -> None:
        assert self.progress is not None
        self.progress.done = done
        self.ctx.store.checkpoint(self.progress, self.acked_keys)
        self.in_flight.difference_update(self.acked_keys)
        self.acked_keys = []
        self.resolved_since = 0
        self.last_checkpoint = time.monotonic()


def settled_files(directory: Path, sizes: dict[Path, tuple[int, float]], settle_s: float) -> list[Path]:
    """Crawl files whose size and mtime did not change since the last poll and are `settle_s` old.

    Files still being written are never read: a writer that names its output `*.tmp`/`*.open` and renames it is
    never seen early, and one that appends in place is seen only once it stopped growing.
    """
    ready: list[Path] = []
    now = time.time()
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not path.name.endswith(CRAWL_SUFFIXES):
            continue
        stat = path.stat()
        current = (stat.st_size, stat.st_mtime)
        if sizes.get(path) == current and now - stat.st_mtime >= settle_s:
            ready.append(path)
        sizes[path] = current
    return ready


def run(args: argparse.Namespace) -> CrawlSummary:
    """Produce the named files, or watch a directory until SIGTERM."""
    ensure_topic(args.bootstrap_servers, args.topic, args.partitions, args.replication_factor)
    summary = CrawlSummary(topic=args.topic)
    # A private registry unless served: several runs in one process (tests, the HTTP service) must not collide.
    metrics = CrawlMetrics(REGISTRY if args.metrics_port is not None else CollectorRegistry())
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port)
    store = StateStore(args.state_dir, max_keys=args.dedup_max_keys, ttl_days=args.dedup_ttl_days)
    options = PageOptions(wanted_languages(args.languages), args.min_language_score, filter_config(args))
    producer = make_producer(args)
    ctx = CrawlContext(
        args,
        producer,
        store,
        LanguageIdentifier(),
        options,
        summary,
        metrics,
        frozenset(d for d in args.dedup.split(",") if d),
    )

    def stop(_signum: int, _frame: object) -> None:
        ctx.stopping = True

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        if args.watch:
            _watch(ctx, Path(args.watch))
        else:
            for name in args.files:
                if ctx.stopping:
                    break
                _run_file(ctx, Path(name))
    finally:
        producer.flush()
        producer.close()
        store.close()
        summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _run_file(ctx: CrawlContext, path: Path) -> None:
    try:
        FileRun(ctx, path).run()
    except DeliveryError:
        raise
    except OSError as exc:
        ctx.summary.failed_files += 1
        print(f"{path}: cannot be read: {exc}", file=sys.stderr)


def _watch(ctx: CrawlContext, directory: Path) -> None:
    sizes: dict[Path, tuple[int, float]] = {}
    done = ctx.store.done_paths()
    while not ctx.stopping:
        for path in settled_files(directory, sizes, ctx.args.settle_seconds):
            if ctx.stopping:
                break
            if str(path.resolve()) not in done:
                _run_file(ctx, path)
                done.add(str(path.resolve()))
        ctx.metrics.polled()
        deadline = time.monotonic() + ctx.args.poll_seconds
        while not ctx.stopping and time.monotonic() < deadline:
            time.sleep(0.1)


def filter_config(args: argparse.Namespace) -> FilterConfig:
    return FilterConfig(
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        min_main_share=args.min_main_share if args.min_main_share > 0 else None,
        gopher_quality=args.gopher_quality,
        gopher_repetition=args.gopher_repetition,
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producers.crawl", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", metavar="FILE", help="WARC or WET files, gzipped or not")
    parser.add_argument("--watch", metavar="DIR", help="poll DIR for new crawl files until SIGTERM")
    parser.add_argument("--bootstrap-servers", required=True, help="HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=3, help="partitions when the topic is created (default 3)")
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--state-dir", required=True, help="where progress and dedup keys live (SQLite)")
    parser.add_argument("--languages", help="keep only these languages, e.g. en,de (default: all)")
    parser.add_argument("--min-language-score", type=float, default=0.0, help="drop pages identified less surely")
    parser.add_argument("--min-chars", type=int, default=DEFAULT_FILTERS.min_chars)
    parser.add_argument("--max-chars", type=int, default=DEFAULT_FILTERS.max_chars)
    parser.add_argument(
        "--min-main-share",
        type=float,
        default=DEFAULT_FILTERS.min_main_share,
        help="drop pages whose main text is under this share of their visible text (0 = off)",
    )
    parser.add_argument("--no-gopher-quality", dest="gopher_quality", action="store_false")
    parser.add_argument("--no-gopher-repetition", dest="gopher_repetition", action="store_false")
    parser.add_argument("--dedup", default="text,url", help="exact dedup by: text, url, both (default) or ''")
    parser.add_argument("--dedup-max-keys", type=int, default=50_000_000, help="keys kept per kind")
    parser.add_argument("--dedup-ttl-days", type=float, default=90.0, help="keys forgotten after this long")
    parser.add_argument("--settle-seconds", type=float, default=5.0, help="--watch: file unchanged this long")
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="--watch: directory poll interval")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    parser.add_argument("--delivery-timeout-s", type=float, default=300.0, help="wait this long for one ack")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_producer_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if bool(args.files) == bool(args.watch):
        parser.error("give crawl files or --watch DIR (not both)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except DeliveryError as exc:
        print(f"stopping: {exc}; a rerun resumes after the last acknowledged record", file=sys.stderr)
        return 1
    print(orjson.dumps(asdict(summary)).decode())
    print(
        f"{summary.produced} documents sent to {summary.topic} from {summary.files} file(s) in {summary.seconds:.1f}s;"
        f" dropped {sum(summary.dropped.values())}, unreadable {sum(summary.unreadable.values())}",
        file=sys.stderr,
    )
    return 1 if summary.failed_files else 0


if __name__ == "__main__":
    sys.exit(main())
