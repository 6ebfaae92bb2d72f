"""`python -m producers.crawl` against the real broker: what reaches the topic, what is dropped and why, and that
each page lands once across reruns, new files with old pages, and a producer killed mid-file."""

from __future__ import annotations

import gzip
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from core.records import parse_message
from devtools.fakeopenai import FakeOpenAI
from devtools.ports import free_port
from devtools.tansu import KafkaTopic, TansuBroker, wait_for
from devtools.warcs import (
    ARTICLES,
    Page,
    article_html,
    crawl_pages,
    response_record,
    warcinfo_record,
    write_warc,
)
from producers.crawl import main
from producers.recovery import FILE_HEADER, RECORD_HEADER
from tests.fixtures.s3 import S3Bucket
from tests.kafka.helpers import Consumer, read_output
from tests.support.documents import REPO

pytestmark = pytest.mark.timeout(300)


def _fresh(broker: TansuBroker, partitions: int = 3) -> KafkaTopic:
    suffix = uuid.uuid4().hex[:10]
    return KafkaTopic(f"crawl-{suffix}", f"g-{suffix}", partitions, broker)


def _args(topic: KafkaTopic, state: Path, *extra: str) -> list[str]:
    return [
        "--bootstrap-servers",
        topic.bootstrap,
        "--topic",
        topic.name,
        "--state-dir",
        str(state),
        "--no-progress",
        *extra,
    ]


def _summary(out: str) -> dict[str, object]:
    return orjson.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _mixed_crawl(path: Path) -> tuple[Path, list[Page]]:
    """Five good pages plus what a real crawl also holds: duplicates, a stub, an image and damaged records."""
    pages = crawl_pages()
    english = pages[0]
    same_text = Page("https://mirror.example.net/copy-of-en", english.body).with_id()
    same_url = Page(english.url, article_html("fr", "Une autre version").encode()).with_id()
    stub = Page("https://garden.example.org/empty", b"<html><body><nav>Home</nav><p>Soon.</p></body></html>")
    image = Page("https://garden.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(200), "image/png")
    noise = random.Random(3).randbytes(4000)
    truncated = gzip.compress(response_record(Page("https://x.test/cut", noise).with_id()))[:2000]
    members = [
        gzip.compress(warcinfo_record()),
        *(gzip.compress(response_record(p)) for p in pages[:3]),
        truncated,
        gzip.compress(response_record(same_text)),
        gzip.compress(b"garbage, not a WARC record\r\n\r\n"),
        gzip.compress(response_record(same_url)),
        gzip.compress(response_record(stub.with_id())),
        gzip.compress(response_record(image.with_id())),
        *(gzip.compress(response_record(p)) for p in pages[3:]),
    ]
    path.write_bytes(b"".join(members))
    return path, pages


def test_pages_reach_the_topic_with_metadata_and_every_other_record_is_counted_by_reason(
    kafka_broker: TansuBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = _fresh(kafka_broker)
    path, pages = _mixed_crawl(tmp_path / "crawl-00001.warc.gz")
    assert main([*_args(topic, tmp_path / "state"), str(path)]) == 0
    out, err = capsys.readouterr()
    summary = _summary(out)
    assert summary["produced"] == 5
    assert summary["dropped"] == {"duplicate_text": 1, "duplicate_url": 1, "too_short": 1, "not_html": 1}
    assert summary["unreadable"] == {"corrupt_gzip": 1, "malformed_record": 1}
    assert summary["skipped_record_types"] == 1
    assert err.count("unreadable record at byte ") == 2

    messages = topic.read(5)
    assert len(messages) == 5
    by_url = {}
    for message in messages:
        doc = parse_message(message.value)
        assert message.key == doc.doc_id.encode()
        headers = dict(message.headers)
        assert headers[FILE_HEADER] == str(path.resolve()).encode()
        assert headers[RECORD_HEADER].decode() == doc.metadata["warc_record_id"]
        by_url[doc.url] = doc
    assert set(by_url) == {p.url for p in pages}
    german = by_url["https://garden.example.de/de/1"]
    assert german.metadata["language"] == "de" and german.metadata["language_score"] > 0.9
    assert german.metadata["crawl_date"] == "2026-11-20T08:15:00Z"
    assert "Gewächshaus" in german.text and "Privacy" not in german.text

    # The same file again: already done. A new file repeating a page: a duplicate remembered across runs.
    assert main([*_args(topic, tmp_path / "state"), str(path)]) == 0
    again = _summary(capsys.readouterr().out)
    assert (again["files_already_done"], again["produced"]) == (1, 0)
    repeat = write_warc(tmp_path / "crawl-00002.warc.gz", [response_record(pages[1].with_id())])
    assert main([*_args(topic, tmp_path / "state"), str(repeat)]) == 0
    assert _summary(capsys.readouterr().out)["dropped"] == {"duplicate_url": 1}


def test_language_selection_on_the_command_line(
    kafka_broker: TansuBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = _fresh(kafka_broker)
    path = write_warc(tmp_path / "c.warc", [response_record(p) for p in crawl_pages()])
    assert main([*_args(topic, tmp_path / "state", "--languages", "ru,zh"), str(path)]) == 0
    summary = _summary(capsys.readouterr().out)
    assert (summary["produced"], summary["dropped"]) == (2, {"language": 3})
    langs = sorted(parse_message(m.value).metadata["language"] for m in topic.read(2))
    assert langs == ["ru", "zh"]


def test_a_delivery_timeout_the_kafka_client_cannot_take_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--delivery-timeout-s` is the client's own `delivery_timeout_ms` (its 120 s default used to expire batches
    before the flag's 300 s), so it must leave room for `linger_ms` and a request's 30 s."""
    path = write_warc(tmp_path / "c.warc", [response_record(crawl_pages()[0])])
    args = ["--bootstrap-servers", "127.0.0.1:9", "--topic", "t", "--state-dir", str(tmp_path / "state")]
    assert main([*args, "--delivery-timeout-s", "10", str(path)]) == 2
    assert "--delivery-timeout-s must be at least --linger-ms + 30 s" in capsys.readouterr().err


def test_a_config_file_that_is_not_toml_is_refused_as_invalid_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "crawl.toml"
    config.write_text("topic = [\n")
    assert main(["--config", str(config), str(tmp_path / "c.warc")]) == 2
    assert f"invalid settings: cannot read config file {config}" in capsys.readouterr().err


def test_warc_to_parquet_rows_with_their_urls(kafka_broker: TansuBroker, fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    """WARC -> producers.crawl -> Kafka -> streamer.consume (fake OpenAI) -> Parquet: one outcome per page."""
    topic = _fresh(kafka_broker)
    path, pages = _mixed_crawl(tmp_path / "crawl.warc.gz")
    produce = subprocess.run(
        [sys.executable, "-m", "producers.crawl", *_args(topic, tmp_path / "state"), str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert produce.returncode == 0, produce.stderr
    consumer = Consumer(topic, str(tmp_path / "out"), fake_llm.url, tmp_path, "--stop-after-idle", "3")
    try:
        assert consumer.start().wait(180) == 0, consumer.log()[-3000:]
    finally:
        consumer.stop()
    output = read_output(str(tmp_path / "out"), topic.name)
    assert sum(output.doc_ids.values()) == 5 and set(output.doc_ids.values()) == {1}
    assert output.rows, output.rejected
    urls = {p.url for p in pages}
    for row in output.rows:
        assert row["source_url"] in urls
        metadata = json.loads(row["metadata"])
        assert metadata["warc_record_id"].startswith("urn:uuid:")
        assert metadata["language"] in ARTICLES


def _many_pages(n: int) -> list[Page]:
    """n distinct English pages (a numbered report line keeps their texts apart)."""
    pages = []
    for i in range(n):
        extra = f"<p>Report {i}: the committee counted {i * 7 + 3} volunteers and {i % 11} new plots.</p>"
        html = article_html("en", f"Garden report {i}", extra=extra)
        pages.append(Page(f"https://garden.example.org/report/{i}", html.encode()).with_id())
    return pages


def _progress(state: Path) -> int:
    db = state / "producer-state.sqlite3"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            row = conn.execute("SELECT next_offset FROM files").fetchone()
    except sqlite3.OperationalError:  # the producer has not created its tables yet
        return 0
    return int(row[0]) if row else 0


def test_killed_mid_file_and_restarted_every_record_lands_once(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    """SIGKILL after the first checkpoint; once the dead run's lease lapses the rerun resumes at the checkpoint and
    finds in the topic what the dead run sent unacknowledged."""
    topic = _fresh(kafka_broker)
    pages = _many_pages(1500)
    path = write_warc(tmp_path / "big.warc.gz", [response_record(p) for p in pages])
    options = _args(topic, tmp_path / "state", "--linger-ms", "50", "--claim-ttl-s", "3")
    cmd = [sys.executable, "-m", "producers.crawl", *options, str(path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _progress(tmp_path / "state") > 0 or proc.poll() is not None, 120, "a first checkpoint")
        assert proc.poll() is None, "finished before it could be killed: make the file bigger"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _progress(tmp_path / "state")
    assert 0 < killed_at < path.stat().st_size

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    summary = _summary(rerun.stdout)
    assert f"resuming at byte {killed_at}" in rerun.stderr
    assert "another producer holds it; waiting" in rerun.stderr

    messages = topic.read(len(pages) + 10, timeout=30)
    ids = Counter(dict(m.headers)[RECORD_HEADER].decode() for m in messages)
    assert set(ids) == {p.record_id for p in pages}
    assert [rid for rid, count in ids.items() if count > 1] == []
    assert summary["dropped"] == {}
    # The rerun read only what was after the checkpoint; what it did not send it found already in the topic.
    assert summary["records"] == int(summary["produced"]) + int(summary["recovered"]) < len(pages)


def _rewind(state: Path) -> None:
    """Make the state what a run killed after its first commit and before recording it leaves: the file's progress
    at its start (scan from offset 0) and none of its dedup keys; the topic keeps what was committed."""
    with sqlite3.connect(state / "producer-state.sqlite3") as conn:
        conn.execute("UPDATE files SET next_offset = 0, done = 0, scan_from = '{}'")
        conn.execute("DELETE FROM seen")


def test_a_record_duplicating_a_recovered_one_is_still_dropped_after_a_resume(
    kafka_broker: TansuBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page found sent before the crash counts for dedup at once: a later record with its URL is not sent."""
    topic = _fresh(kafka_broker)
    pages = crawl_pages()
    same_url = Page(pages[0].url, article_html("fr", "Une autre version").encode()).with_id()
    path = write_warc(tmp_path / "c.warc.gz", [response_record(p) for p in [*pages[:2], same_url, *pages[2:]]])
    assert main([*_args(topic, tmp_path / "state"), str(path)]) == 0
    first = _summary(capsys.readouterr().out)
    assert (first["produced"], first["dropped"]) == (5, {"duplicate_url": 1})

    _rewind(tmp_path / "state")
    assert main([*_args(topic, tmp_path / "state"), str(path)]) == 0
    again = _summary(capsys.readouterr().out)
    assert (again["recovered"], again["produced"], again["dropped"]) == (5, 0, {"duplicate_url": 1})
    ids = Counter(dict(m.headers)[RECORD_HEADER].decode() for m in topic.read(7, timeout=5))
    assert ids == Counter(p.record_id for p in pages)


def _without_id(record: bytes) -> bytes:
    """A WARC record with its WARC-Record-ID field removed, as some crawlers write them."""
    head, sep, rest = record.partition(b"\r\n\r\n")
    return b"\r\n".join(f for f in head.split(b"\r\n") if not f.startswith(b"WARC-Record-ID:")) + sep + rest


def test_records_without_or_with_repeated_ids_are_told_apart_on_resume(
    kafka_broker: TansuBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run committed the first two records and died: on resume the later id-less record and the later one
    repeating an id are sent, not taken for those two (which lost them)."""
    topic = _fresh(kafka_broker)
    pages = _many_pages(4)
    repeated = pages[3].record_id
    records = [
        _without_id(response_record(pages[0])),
        response_record(Page(pages[1].url, pages[1].body, record_id=repeated)),
        _without_id(response_record(pages[2])),
        response_record(pages[3]),
    ]
    path = write_warc(tmp_path / "c.warc.gz", records[:2])
    assert main([*_args(topic, tmp_path / "state"), str(path)]) == 0
    assert _summary(capsys.readouterr().out)["produced"] == 2

    write_warc(path, records)
    _rewind(tmp_path / "state")
    assert main([*_args(topic, tmp_path / "state"), str(path)]) == 0
    summary = _summary(capsys.readouterr().out)
    assert (summary["recovered"], summary["produced"]) == (2, 2)
    urls = Counter(parse_message(m.value).url for m in topic.read(6, timeout=5))
    assert urls == Counter(p.url for p in pages)


def _updated_at(state: Path) -> float:
    """When the file's progress was last recorded (0 before its first record)."""
    try:
        with sqlite3.connect(state / "producer-state.sqlite3", timeout=10) as conn:
            row = conn.execute("SELECT updated_at FROM files").fetchone()
    except sqlite3.OperationalError:  # no state yet
        return 0.0
    return float(row[0]) if row else 0.0


def test_stopped_inside_a_gzip_member_without_dedup_the_resume_sends_nothing_twice(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    """One gzip member holding many records: a checkpoint inside it leaves progress at the member's start, so the
    resume reads it again; with the dedup store off only the scan can know what was sent (it was scanned past)."""
    topic = _fresh(kafka_broker)
    pages = _many_pages(1500)
    path = tmp_path / "one-member.warc.gz"
    path.write_bytes(gzip.compress(b"".join(response_record(p) for p in pages)))
    cmd = [sys.executable, "-m", "producers.crawl", *_args(topic, tmp_path / "state", "--dedup", ""), str(path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _updated_at(tmp_path / "state") > 0, 60, "the first progress record")
        first = _updated_at(tmp_path / "state")
        wait_for(lambda: _updated_at(tmp_path / "state") > first or proc.poll() is not None, 60, "a checkpoint")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    stopped = _summary(out)
    assert _progress(tmp_path / "state") == 0 and 0 < int(stopped["produced"]) < len(pages), stopped

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    summary = _summary(rerun.stdout)
    assert (summary["recovered"], summary["produced"]) == (stopped["produced"], len(pages) - int(stopped["produced"]))
    ids = Counter(dict(m.headers)[RECORD_HEADER].decode() for m in topic.read(len(pages) + 10, timeout=30))
    assert set(ids) == {p.record_id for p in pages}
    assert [rid for rid, count in ids.items() if count > 1] == []


def test_a_frozen_producer_that_wakes_after_a_takeover_lands_nothing(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    """The late-append race, made deterministic: a producer frozen mid-file (SIGSTOP) holds sends in its buffers and
    an open transaction; its lease lapses, a rerun takes the file over (fencing it) and completes it; then the frozen
    one wakes and sends. The broker must refuse all of it, and the woken run must give the file up without touching
    its progress."""
    topic = _fresh(kafka_broker)
    pages = _many_pages(1500)
    path = write_warc(tmp_path / "big.warc.gz", [response_record(p) for p in pages])
    # No dedup: the dedup store would drop, unsent, every record the woken run finds already recorded.
    options = _args(topic, tmp_path / "state", "--linger-ms", "50", "--claim-ttl-s", "3", "--dedup", "")
    cmd = [sys.executable, "-m", "producers.crawl", *options, str(path)]
    frozen = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _progress(tmp_path / "state") > 0 or frozen.poll() is not None, 120, "a first checkpoint")
        assert frozen.poll() is None, "finished before it could be frozen: make the file bigger"
        frozen.send_signal(signal.SIGSTOP)
        rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert rerun.returncode == 0, rerun.stderr
        assert _summary(rerun.stdout)["files"] == 1
        frozen.send_signal(signal.SIGCONT)
        out, err = frozen.communicate(timeout=120)
    finally:
        if frozen.poll() is None:
            frozen.kill()
            frozen.communicate()
    # Woken, it sent what it held and was refused; it left the file to its new owner, then found it done.
    assert "ProducerFencedError" in err and "taken over by another producer" in err, err
    assert frozen.returncode == 0, err
    assert _summary(out)["files_already_done"] == 1
    assert _progress(tmp_path / "state") == path.stat().st_size

    messages = topic.read(len(pages) + 10, timeout=30)
    ids = Counter(dict(m.headers)[RECORD_HEADER].decode() for m in messages)
    assert set(ids) == {p.record_id for p in pages}
    assert [rid for rid, count in ids.items() if count > 1] == []


def test_two_producers_on_the_same_files_send_each_record_once(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    """Processes sharing a state directory take turns on a file (a lease), so none is sent twice."""
    topic = _fresh(kafka_broker)
    pages = _many_pages(300)
    files = [write_warc(tmp_path / f"part-{i}.warc.gz", [response_record(p) for p in pages[i::2]]) for i in (0, 1)]
    cmd = [sys.executable, "-m", "producers.crawl", *_args(topic, tmp_path / "state"), *map(str, files)]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        summaries.append(_summary(out))
    assert sum(int(s["produced"]) for s in summaries) == len(pages)
    assert sum(int(s["files"]) + int(s["files_already_done"]) for s in summaries) == 4
    ids = Counter(dict(m.headers)[RECORD_HEADER].decode() for m in topic.read(len(pages) + 10, timeout=20))
    assert set(ids) == {p.record_id for p in pages} and set(ids.values()) == {1}


def test_watch_mode_takes_each_settled_file_once_and_serves_metrics(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    """A `.tmp` file is never read; once renamed and settled it is produced; a restarted watcher skips it."""
    topic = _fresh(kafka_broker)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "producers.crawl",
        *_args(topic, tmp_path / "state"),
        "--watch",
        str(incoming),
        "--settle-seconds",
        "0.5",
        "--poll-seconds",
        "0.2",
        "--metrics-port",
        str(port),
    ]
    pages = crawl_pages()
    watcher = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        partial = write_warc(incoming / "a.warc.gz.tmp", [response_record(p) for p in pages[:3]], gzipped=True)
        # Watching (however long the process took to start), then long enough for the .tmp file to settle twice.
        wait_for(lambda: _metric(port, "webr_producer_last_poll_timestamp_seconds"), 60, "a directory poll")
        time.sleep(1.5)
        assert _metric(port, 'webr_producer_records_total{outcome="produced",reason=""}') == 0.0
        partial.rename(incoming / "a.warc.gz")
        write_warc(incoming / "b.warc", [response_record(p) for p in pages[3:]])
        wait_for(
            lambda: _metric(port, 'webr_producer_records_total{outcome="produced",reason=""}') == 5.0,
            60,
            "five pages produced",
        )
        assert _metric(port, "webr_producer_files_total") == 2.0
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert _summary(out)["produced"] == 5
    assert sorted(dict(m.headers)[RECORD_HEADER].decode() for m in topic.read(5)) == sorted(p.record_id for p in pages)

    restarted = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _metric(port, "webr_producer_last_poll_timestamp_seconds"), 60, "a directory poll")
    finally:
        restarted.send_signal(signal.SIGTERM)
        out, err = restarted.communicate(timeout=60)
    assert restarted.returncode == 0, err
    assert (_summary(out)["files"], _summary(out)["produced"]) == (0, 0)


def test_watch_retries_a_file_whose_resume_scan_timed_out(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    """An open transaction of another producer holds `read_committed` readers, so resuming a file cannot read the
    topic to its end: the file is tried again at later polls (it was reported unreadable and never retried), and is
    completed once the transaction ends."""
    topic = _fresh(kafka_broker, partitions=1)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    pages = crawl_pages()
    path = write_warc(incoming / "a.warc.gz", [response_record(p) for p in pages])
    assert main([*_args(topic, tmp_path / "state"), str(path)]) == 0
    _rewind(tmp_path / "state")
    blocker = KafkaProducer(bootstrap_servers=topic.bootstrap, transactional_id=f"blocker-{topic.name}")
    blocker.init_transactions()
    blocker.begin_transaction()
    blocker.send(topic.name, b"held open").get(timeout=30)
    port = free_port()
    options = ["--watch", str(incoming), "--settle-seconds", "0", "--poll-seconds", "0.2", "--scan-timeout-s", "1"]
    cmd = [sys.executable, "-m", "producers.crawl", *_args(topic, tmp_path / "state"), *options]
    watcher = subprocess.Popen(
        [*cmd, "--metrics-port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: _metric(port, "webr_producer_last_poll_timestamp_seconds"), 60, "a directory poll")
        time.sleep(4)  # several polls, each scan timing out
        blocker.abort_transaction()
        wait_for(lambda: _metric(port, "webr_producer_files_total") == 1.0, 60, "the file completed")
    finally:
        blocker.close()
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert err.count("trying again at the next poll") >= 2, err
    assert "cannot be read" not in err
    summary = _summary(out)
    assert (summary["recovered"], summary["produced"], summary["failed_files"]) == (5, 0, 0)


def test_an_s3_watcher_outlives_a_store_outage(kafka_broker: TansuBroker, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """The store refuses connections for a few polls (the watcher died of the first one), then an object arrives."""
    topic = _fresh(kafka_broker)
    port = free_port()
    watcher = _watch_s3(topic, tmp_path / "state", s3_bucket, port)
    try:
        wait_for(lambda: _metric(port, "webr_producer_last_poll_timestamp_seconds"), 60, "a first listing")
        s3_bucket.server.stop()
        time.sleep(3)
        assert watcher.poll() is None, watcher.communicate()[1]
        s3_bucket.server.start()
        pages = crawl_pages()
        body = write_warc(tmp_path / "x.warc.gz", [response_record(p) for p in pages]).read_bytes()
        s3_bucket.server.client().put_object(Bucket=s3_bucket.name, Key="crawl/x.warc.gz", Body=body)
        wait_for(lambda: _metric(port, "webr_producer_files_total") == 1.0, 60, "the object produced")
    finally:
        if not s3_bucket.server.running:
            s3_bucket.server.start()
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert "trying again at the next poll" in err
    assert _summary(out)["produced"] == 5


def _watch_s3(topic: KafkaTopic, state: Path, bucket: S3Bucket, port: int) -> subprocess.Popen[str]:
    """`producers.crawl --watch s3://BUCKET/crawl`, polling every 0.2 s, with its metrics on `port`."""
    watch = ["--watch", bucket.uri("crawl"), "--s3-endpoint-url", bucket.endpoint_url, "--poll-seconds", "0.2"]
    cmd = [sys.executable, "-m", "producers.crawl", *_args(topic, state), *watch, "--metrics-port", str(port)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _metric(port: int, sample: str) -> float | None:
    """One sample's value from the watcher's /metrics, or None while it is not up yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0 if sample.startswith("webr_producer_records_total") else None


def test_watch_an_s3_prefix(kafka_broker: TansuBroker, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Objects under the prefix are produced once, under their s3:// URI; the spool copy is removed."""
    topic = _fresh(kafka_broker)
    pages = crawl_pages()
    body = write_warc(tmp_path / "x.warc.gz", [response_record(p) for p in pages]).read_bytes()
    client = s3_bucket.server.client()
    client.put_object(Bucket=s3_bucket.name, Key="crawl/2026/x.warc.gz", Body=body)
    client.put_object(Bucket=s3_bucket.name, Key="crawl/2026/notes.txt", Body=b"not a crawl file")
    port = free_port()
    watcher = _watch_s3(topic, tmp_path / "state", s3_bucket, port)
    try:
        wait_for(lambda: _metric(port, "webr_producer_files_total") == 1.0, 60, "the object produced")
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert _summary(out)["produced"] == 5
    key = f"s3://{s3_bucket.name}/crawl/2026/x.warc.gz"
    messages = topic.read(5)
    assert {dict(m.headers)[FILE_HEADER].decode() for m in messages} == {key}
    assert sorted(dict(m.headers)[RECORD_HEADER].decode() for m in messages) == sorted(p.record_id for p in pages)
    assert list((tmp_path / "state" / "spool").iterdir()) == []
