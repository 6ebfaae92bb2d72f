"""Produce WARC and WET files of crawled pages to a Kafka topic: each page once, across crashes and restarts.

    python -m producers.crawl --bootstrap-servers HOST:PORT --topic T --state-dir DIR [--languages en,de] FILE...
    python -m producers.crawl --bootstrap-servers HOST:PORT --topic T --state-dir DIR --watch INCOMING/

Each HTML response becomes its main text (producers.extract), gets a language (producers.language), passes the
quality filters (producers.filters) and the exact-dedup check (producers.state), and is sent keyed by `doc_id`
with its URL, crawl date, WARC-Record-ID and language. Every record that is not sent is counted by reason; an
unreadable one is reported with its byte offset and reading goes on.

A file's progress is written to the state store only for records Kafka acknowledged, in file order; a run killed
mid-file resumes after the last acknowledged record, and first reads the topic for messages the dead run sent
but never saw acknowledged (producers.recovery), so no record lands twice. `--watch` polls a directory or an S3
prefix for new `*.warc[.gz]` / `*.wet[.gz]` files (producers.crawl_sources) and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import orjson
from prometheus_client import REGISTRY, CollectorRegistry

from core.topics import ensure_topic
from producers.crawl_file import CrawlContext, CrawlSummary, DeliveryError, FileRun
from producers.crawl_metrics import CrawlMetrics
from producers.crawl_sources import CrawlSource, open_source
from producers.files import add_producer_arguments, make_producer
from producers.filters import FilterConfig
from producers.language import LanguageIdentifier
from producers.pages import PageOptions, wanted_languages
from producers.state import StateStore

log = logging.getLogger("producers.crawl")

DEFAULT_FILTERS = FilterConfig()


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

    previous = signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        if args.watch:
            source = open_source(args.watch, Path(args.state_dir), args.settle_seconds, args.s3_endpoint_url)
            _watch(ctx, source)
        else:
            for name in args.files:
                if ctx.stopping:
                    break
                _run_file(ctx, Path(name), wait=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        producer.flush()
        producer.close()
        store.close()
        summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _run_file(ctx: CrawlContext, path: Path, wait: bool, key: str | None = None) -> bool:
    """Produce one file; False if another producer holds it (after waiting for it, when `wait`)."""
    try:
        while not FileRun(ctx, path, key).run():
            if not wait or ctx.stopping:
                return False
            log.warning("%s: another producer holds it; waiting", path)
            time.sleep(min(1.0, ctx.args.claim_ttl_s / 4))
        return True
    except DeliveryError:
        raise
    except OSError as exc:
        ctx.summary.failed_files += 1
        print(f"{key or path}: cannot be read: {exc}", file=sys.stderr)
        return True


def _watch(ctx: CrawlContext, source: CrawlSource) -> None:
    done = ctx.store.done_paths()
    while not ctx.stopping:
        for key in source.ready():
            if ctx.stopping:
                break
            if key in done:
                continue
            with source.local(key) as path:
                if _run_file(ctx, path, wait=False, key=key):
                    done.add(key)
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
    parser.add_argument("--watch", metavar="DIR|s3://B/P", help="poll for new crawl files until SIGTERM")
    parser.add_argument("--s3-endpoint-url", help="S3-compatible store for an s3:// --watch (MinIO, Ceph)")
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
    parser.add_argument(
        "--claim-ttl-s",
        type=float,
        default=60.0,
        help="a file's lease: another producer takes over a dead holder's file after this long",
    )
    parser.add_argument(
        "--resume-quiet-s",
        type=float,
        default=3.0,
        help="resuming a file: wait until the topic has not grown for this long before looking for what was sent",
    )
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
