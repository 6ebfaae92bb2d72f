"""Crawl producer throughput: WARC -> Kafka with extraction, WET -> Kafka without, per CPU core.

    python -m bench.crawl_producer --source ../shared/data/web_en_1k.json --runs 3

Wraps each page of a reference-format file (`[{"webpage": ...}]`) in a realistic HTML page (head with scripts
and styles, navigation, the article, a sidebar, a footer), writes them as one gzipped WARC of HTTP responses and
one gzipped WET of text conversions, and measures, as docs per CPU-second of this process (one core's worth):
  read        the WARC reader alone
  extract     resiliparse main-text extraction (what producers.crawl uses) vs trafilatura, per page
  pipeline    decode + extract + language id + filters (producers.pages.to_page), no Kafka
  warc_kafka  `producers.crawl` end to end into a local tansu broker, state store and dedup included
  wet_kafka   the same from the WET file: no HTML extraction
Medians of `--runs`; the broker runs in its own process, so its CPU is not counted.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from devtools.tansu import TansuBroker
from devtools.warcs import Page, response_record, warc_record
from producers.crawl import make_parser
from producers.crawl import run as crawl_run
from producers.extract import extract_html
from producers.language import LanguageIdentifier
from producers.pages import PageOptions, to_page
from producers.settings import CrawlSettings
from producers.warc_records import CrawlRecord, iter_warc

TEMPLATE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>window.dataLayer=window.dataLayer||[];function gtag(){{dataLayer.push(arguments);}}</script>
<style>body{{font-family:sans-serif}}</style></head><body>
<header><nav><a href="/">Home</a> <a href="/news">News</a> <a href="/topics">Topics</a> <a href="/about">About</a>
</nav></header><main><article><h1>{title}</h1>{body}</article></main>
<aside><h3>Related</h3><ul><li><a href="/r/1">Related story one</a></li><li><a href="/r/2">Another</a></li></ul>
</aside><footer><p>&copy; 2026 Example Media</p><a href="/privacy">Privacy</a> <a href="/terms">Terms</a></footer>
<script>gtag('config','G-BENCH');</script></body></html>"""


def build_files(source: Path, directory: Path) -> tuple[Path, Path, list[bytes]]:
    texts = [doc["webpage"] for doc in json.loads(source.read_text())]
    bodies: list[bytes] = []
    warc, wet = directory / "bench.warc.gz", directory / "bench.wet.gz"
    with open(warc, "wb") as warc_fh, open(wet, "wb") as wet_fh:
        for i, text in enumerate(texts):
            paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n") if p.strip())
            body = TEMPLATE.format(title=f"Page {i}", body=paragraphs).encode()
            bodies.append(body)
            url = f"https://bench.example.org/{i}"
            warc_fh.write(gzip.compress(response_record(Page(url, body, record_id=f"urn:uuid:{uuid.uuid4()}"))))
            wet_fh.write(gzip.compress(warc_record("conversion", text.encode(), url, content_type="text/plain")))
    return warc, wet, bodies


def per_cpu_second(count: int, work: Callable[[], object], runs: int) -> float:
    rates = []
    for _ in range(runs):
        started = time.process_time()
        work()
        rates.append(count / (time.process_time() - started))
    return statistics.median(rates)


def kafka_rate(broker: TansuBroker, path: Path, runs: int, state_root: Path) -> tuple[float, float, int]:
    """(docs per CPU-second, docs per wall-second, docs produced) of producers.crawl on one file."""
    cpu_rates, wall_rates, produced = [], [], 0
    for _ in range(runs):
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        args = make_parser().parse_args(
            [
                "--bootstrap-servers",
                broker.bootstrap,
                "--topic",
                topic,
                "--state-dir",
                str(state_root / uuid.uuid4().hex),
                "--no-progress",
                "--dedup",
                "",
                str(path),
            ]
        )
        cpu, wall = time.process_time(), time.monotonic()
        summary = crawl_run(CrawlSettings.from_args(args))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        produced = summary.produced
        cpu_rates.append(produced / cpu)
        wall_rates.append(produced / wall)
    return statistics.median(cpu_rates), statistics.median(wall_rates), produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="reference-format JSON of pages")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warc, wet, bodies = build_files(args.source, root)
        records = [r for r in iter_warc(warc) if isinstance(r, CrawlRecord)]
        n = len(records)
        langid = LanguageIdentifier()
        options = PageOptions()
        results: dict[str, float | int] = {"pages": n, "mean_html_bytes": sum(map(len, bodies)) // n}
        results["read"] = per_cpu_second(n, lambda: list(iter_warc(warc)), args.runs)
        results["extract_resiliparse"] = per_cpu_second(
            n, lambda: [extract_html(b, "utf-8") for b in bodies], args.runs
        )
        try:
            import trafilatura
        except ImportError:
            results["extract_trafilatura"] = float("nan")
        else:
            results["extract_trafilatura"] = per_cpu_second(
                n, lambda: [trafilatura.extract(b.decode()) for b in bodies], args.runs
            )
        results["pipeline"] = per_cpu_second(n, lambda: [to_page(r, langid, options) for r in records], args.runs)
        results["kept"] = sum(to_page(r, langid, options).document is not None for r in records)
        broker = TansuBroker(root / "tansu.log")
        broker.start()
        try:
            cpu, wall, produced = kafka_rate(broker, warc, args.runs, root)
            results |= {"warc_kafka_cpu": cpu, "warc_kafka_wall": wall, "warc_produced": produced}
            cpu, wall, produced = kafka_rate(broker, wet, args.runs, root)
            results |= {"wet_kafka_cpu": cpu, "wet_kafka_wall": wall, "wet_produced": produced}
        finally:
            broker.stop()
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
