"""Produce WARC and WET files of crawled pages to a Kafka topic: each page once, across crashes and restarts.

    python -m producers.crawl --bootstrap-servers HOST:PORT --topic T --state-dir DIR [--languages en,de] FILE...
    python -m producers.crawl --bootstrap-servers HOST:PORT --topic T --state-dir DIR --watch INCOMING/

Each HTML response becomes its main text (producers.extract), gets a language (producers.language), passes the
quality filters (producers.filters) and the exact-dedup check (producers.state), and is sent keyed by `doc_id`
with its URL, crawl date, WARC-Record-ID and language. Every record that is not sent is counted by reason; an
unreadable one is reported with its byte offset and reading goes on.

Each file is sent in Kafka transactions by a producer of its own, and its progress is written to the state store
only for what was committed, in file order; a run killed mid-file resumes after the last checkpoint, fencing the
dead run's producer and then reading the topic for what it sent after that checkpoint (producers.recovery), so no
record lands twice. `--watch` polls a directory or an S3
prefix for new `*.warc[.gz]` / `*.wet[.gz]` files (producers.crawl_sources) and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from producers.cli import files_parser, load_settings, print_summary
from producers.crawl_file import CrawlContext, CrawlSummary, DeliveryError, FileRun
from producers.crawl_metrics import CrawlMetrics
from producers.crawl_sources import CrawlSource, open_source
from producers.files import create_topic
from producers.filters import FilterConfig
from producers.language import LanguageIdentifier
from producers.pages import PageOptions, wanted_languages
from producers.recovery import ScanTimeout
from producers.settings import CrawlSettings
from producers.state import StateStore

log = logging.getLogger("producers.crawl")

DEFAULT_FILTERS = FilterConfig()


def run(settings: CrawlSettings) -> CrawlSummary:
    """Produce the named files, or watch a directory until SIGTERM."""
    create_topic(settings.kafka)
    summary = CrawlSummary(topic=settings.kafka.topic)
    # A private registry unless served: several runs in one process (tests, the HTTP service) must not collide.
    metrics = CrawlMetrics(REGISTRY if settings.metrics_port is not None else CollectorRegistry())
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port)
    store = StateStore(settings.state_dir, max_keys=settings.dedup_max_keys, ttl_days=settings.dedup_ttl_days)
    options = PageOptions(wanted_languages(settings.languages), settings.min_language_score, settings.filters())
    ctx = CrawlContext(
        settings,
        store,
        LanguageIdentifier(),
        options,
        summary,
        metrics,
        frozenset(d for d in settings.dedup.split(",") if d),
    )

    def stop(_signum: int, _frame: object) -> None:
        ctx.stopping = True

    previous = signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        if settings.watch:
            source = open_source(settings.watch, Path(settings.state_dir), settings.settle_seconds, settings.storage)
            _watch(ctx, source)
        else:
            for name in settings.files:
                if ctx.stopping:
                    break
                _run_file(ctx, Path(name), wait=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        store.close()
        summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _run_file(ctx: CrawlContext, path: Path, wait: bool, key: str | None = None) -> bool:
    """Produce one file; False if it is left for a later poll: another producer holds it (after waiting for it,
    when `wait`), or, when watching, the topic could not be scanned for what an earlier run sent."""
    try:
        while not FileRun(ctx, path, key).run():
            if not wait or ctx.stopping:
                return False
            log.warning("%s: another producer holds it; waiting", path)
            time.sleep(min(1.0, ctx.settings.claim_ttl_s / 4))
        return True
    except DeliveryError:
        raise
    except ScanTimeout as exc:
        if not wait:
            log.warning("%s: %s; trying again at the next poll", key or path, exc)
            return False
        ctx.summary.failed_files += 1
        print(f"{key or path}: not resumed: {exc}; a rerun tries again", file=sys.stderr)
        return True
    except OSError as exc:
        ctx.summary.failed_files += 1
        print(f"{key or path}: cannot be read: {exc}", file=sys.stderr)
        return True


def _watch(ctx: CrawlContext, source: CrawlSource) -> None:
    """Poll until SIGTERM. A source that cannot be listed or copied from (an S3 outage) is tried again at the
    next poll, and the poll timestamp stays old meanwhile: the watcher outlives the outage."""
    done = ctx.store.done_paths()
    while not ctx.stopping:
        try:
            _poll(ctx, source, done)
            ctx.metrics.polled()
        except OSError as exc:
            log.warning("%s: %s; trying again at the next poll", ctx.settings.watch, exc)
        deadline = time.monotonic() + ctx.settings.poll_seconds
        while not ctx.stopping and time.monotonic() < deadline:
            time.sleep(0.1)


def _poll(ctx: CrawlContext, source: CrawlSource, done: set[str]) -> None:
    for key in source.ready():
        if ctx.stopping:
            break
        if key in done:
            continue
        with source.local(key) as path:
            if _run_file(ctx, path, wait=False, key=key):
                done.add(key)


def make_parser() -> argparse.ArgumentParser:
    return files_parser("python -m producers.crawl", __doc__, CrawlSettings, "*")


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(CrawlSettings, make_parser(), argv)
    if settings is None:
        return 2
    try:
        summary = run(settings)
    except DeliveryError as exc:
        print(f"stopping: {exc}; a rerun resumes after the last checkpoint", file=sys.stderr)
        return 1
    print_summary(
        summary,
        f"{summary.produced} documents sent to {summary.topic} from {summary.files} file(s) in {summary.seconds:.1f}s;"
        f" dropped {sum(summary.dropped.values())}, unreadable {sum(summary.unreadable.values())}",
    )
    return 1 if summary.failed_files else 0


if __name__ == "__main__":
    sys.exit(main())
