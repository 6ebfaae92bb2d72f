"""Exactly once under failures, end to end: real broker, real S3 API, real engine over HTTP, consumer processes.

Every document put on the topic must end in the output exactly once, as a row or a rejection with a reason,
across SIGKILLs at random moments, and malformed messages must become rejections while good documents flow on.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.keys import parse_file_name
from core.markers import marker_dir, read_markers
from core.storage import Location, resolve
from devtools.fakeopenai import FakeOpenAI
from devtools.tansu import KafkaTopic
from tests.fixtures.s3 import S3Bucket
from tests.kafka.helpers import Consumer, documents, read_output, sleep_until, wait_committed
from trainer.exceptions import EmptySnapshot
from trainer.snapshot import FileEntry, take_snapshot

pytestmark = pytest.mark.timeout(300)

HUGE = "The harbour ferry timetable changes with the tides. " * 60_000  # ~3 MB

MALFORMED: dict[str, tuple[bytes, set[str]]] = {
    "bad-not-json": (b"this is not json {", {"not_json"}),
    "bad-binary": (bytes(range(256)) * 4, {"not_utf8"}),
    "bad-binary-text": (json.dumps({"id": "bin", "text": "ab\x00\x01\x02cd"}).encode(), {"binary_text"}),
    "bad-empty": (b"", {"empty_message"}),
    "bad-no-text": (json.dumps({"id": "no-text", "url": "https://t.test/x"}).encode(), {"missing_text"}),
    "bad-int-text": (json.dumps({"id": "int-text", "text": 42}).encode(), {"text_not_string"}),
    "bad-array": (json.dumps([{"id": "in-array", "text": "hello"}]).encode(), {"not_an_object"}),
}


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(output URI, S3 endpoint) on a local directory or a fresh bucket of the moto server."""
    if request.param == "local":
        yield str(tmp_path / "out"), None
    else:
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        yield bucket.uri(), bucket.endpoint_url


def test_malformed_messages_become_rejections_and_good_documents_flow(
    kafka_topic: KafkaTopic,
    fake_llm: FakeOpenAI,
    output: tuple[str, str | None],
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    uri, endpoint = output
    good = documents(40)
    huge = (b"doc-huge", json.dumps({"id": "doc-huge", "text": HUGE}).encode())
    bad = [(key.encode(), value) for key, (value, _) in MALFORMED.items()]
    mixed = good[:20] + bad[:4] + [huge] + good[20:] + bad[4:]
    kafka_topic.produce(mixed)

    consumer = Consumer(kafka_topic, uri, fake_llm.url, tmp_path, "--stop-after-idle", "3", s3_endpoint_url=endpoint)
    consumers.append(consumer.start())
    assert consumer.wait() == 0, consumer.log()[-3000:]

    out = read_output(uri, kafka_topic.name, endpoint)
    assert max(out.sources.values()) == 1, "an offset was written twice"
    assert len(out.sources) == len(mixed)
    good_ids = {k.decode() for k, _ in good} | {"doc-huge"}
    by_id = out.doc_ids
    assert all(by_id[i] == 1 for i in good_ids), {i: by_id[i] for i in good_ids if by_id[i] != 1}
    rows = {r["doc_id"]: r for r in out.rows}
    assert len(rows) >= 36, [(r["doc_id"], r["reason"]) for r in out.rejected]
    huge_rejection = [r for r in out.rejected if r["doc_id"] == "doc-huge"]
    assert [r["reason"] for r in huge_rejection] == ["page_too_large"], "a 3 MB page is refused, not sent"

    rejected_by_key = {}
    values = {v: k.decode() for k, v in bad}
    for r in out.rejected:
        if r["payload"] in values:
            rejected_by_key[values[r["payload"]]] = r
    assert set(rejected_by_key) == set(MALFORMED)
    for key, (_, reasons) in MALFORMED.items():
        assert rejected_by_key[key]["reason"] in reasons, (key, rejected_by_key[key]["reason"])
        assert rejected_by_key[key]["stage"] == "input"

    # dead letters: the original message, where it came from and why, once per rejection
    letters = kafka_topic.read(len(out.rejected), topic=f"{kafka_topic.name}.dlq", timeout=20)
    assert len(letters) == len(out.rejected)
    by_source = {(r["source_partition"], r["source_offset"]): r for r in out.rejected}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        src = (int(headers["webr.source.partition"]), int(headers["webr.source.offset"]))
        assert headers["webr.source.topic"] == kafka_topic.name
        assert headers["webr.reason"] == by_source[src]["reason"]
        assert headers["webr.stage"] == by_source[src]["stage"]
        assert letter.value == (by_source[src]["payload"] or letter.value)
    assert {
        (int(dict(x.headers)["webr.source.partition"]), int(dict(x.headers)["webr.source.offset"])) for x in letters
    } == set(by_source)

    # everything committed, to the end of each partition
    ends: dict[int, int] = {}
    for p, o in out.sources:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert kafka_topic.committed() == ends
    # structured logs: every line of the consumer is a JSON object
    assert any(e["msg"].startswith("committed") for e in consumer.events())


def test_sigkill_three_times_at_random_moments_leaves_every_document_once(
    kafka_topic: KafkaTopic,
    fake_llm_factory,
    output: tuple[str, str | None],
    tmp_path: Path,  # type: ignore[no-untyped-def]
    consumers: list[Consumer],
) -> None:
    """150 documents, 3 partitions; kill -9 three times at random moments, restart; exactly once at the end."""
    uri, endpoint = output
    llm: FakeOpenAI = fake_llm_factory(latency_s=(0.02, 0.25))
    docs = documents(150)
    kafka_topic.produce(docs)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    consumer = Consumer(kafka_topic, uri, llm.url, tmp_path, s3_endpoint_url=endpoint)
    consumers.append(consumer)
    kills = 0
    while kills < 3:
        consumer.start()
        consumer.wait_ready()
        sleep_until(time.monotonic() + rng.uniform(0.2, 2.5))
        if consumer.exited:
            break
        consumer.kill()
        kills += 1
    assert kills == 3, f"consumer exited on its own before the third kill (seed {seed})"
    assert sum(c or 0 for c in kafka_topic.committed().values()) < len(docs), "killed too late to test anything"
    # a trainer snapshot now takes only what Kafka has committed, whatever the kills left published
    location = resolve(uri, s3_endpoint_url=endpoint)
    committed = kafka_topic.committed()
    for entry in committed_snapshot(location):
        key = parse_file_name(entry.path.rsplit("/", 1)[-1])
        assert key is not None and entry.end_offset == key.end_offset, entry
        assert key.end_offset <= (committed[key.partition] or 0), (entry, committed)

    consumer.cmd += ["--stop-after-idle", "3"]
    consumer.start()
    assert consumer.wait() == 0, consumer.log()[-3000:]

    out = read_output(uri, kafka_topic.name, endpoint)
    assert max(out.sources.values()) == 1, f"an offset was written twice (seed {seed})"
    assert set(out.doc_ids) == {k.decode() for k, _ in docs}
    assert max(out.doc_ids.values()) == 1, f"a document was written twice (seed {seed})"
    assert len(out.rows) + len(out.rejected) == len(docs)
    assert len(out.rows) >= 140, [(r["doc_id"], r["reason"]) for r in out.rejected]
    assert sum(kafka_topic.committed().values()) == len(docs)  # type: ignore[arg-type]
    wait_committed(kafka_topic, len(docs), timeout=5)
    # the markers followed the commits: the snapshot takes every row, once, and holds nothing back
    markers = {p: m.committed_offset for (stream, p), m in read_markers(location).items() if stream == kafka_topic.name}
    assert markers == {p: o for p, o in kafka_topic.committed().items() if o}
    manifest = committed_snapshot(location)
    assert sum(f.rows for f in manifest) == len(out.rows)
    assert len({f.path for f in manifest}) == len(manifest)


def committed_snapshot(location: Location) -> tuple[FileEntry, ...]:
    """The files a trainer snapshot takes now (none yet is an empty tuple, not an error)."""
    try:
        return take_snapshot(location)[0].files
    except EmptySnapshot:
        return ()


def test_a_marker_left_behind_by_its_owner_catches_up_on_the_next_assignment(
    kafka_topic: KafkaTopic, fake_llm: FakeOpenAI, tmp_path: Path, consumers: list[Consumer]
) -> None:
    """An owner killed between its commit and its marker leaves the marker behind; the next owner, with nothing
    left to commit on a drained topic, still moves it to the committed offset when it is assigned the partition."""
    docs = documents(30)
    kafka_topic.produce(docs)
    uri = str(tmp_path / "out")
    consumer = Consumer(kafka_topic, uri, fake_llm.url, tmp_path, "--stop-after-idle", "3")
    consumers.append(consumer.start())
    assert consumer.wait() == 0, consumer.log()[-3000:]
    location = resolve(uri)
    committed = {p: o for p, o in kafka_topic.committed().items() if o}
    assert sum(committed.values()) == len(docs)
    behind = {p: m for (_, p), m in read_markers(location).items()}
    assert {p: m.committed_offset for p, m in behind.items()} == committed
    for p in behind:  # as if each partition's last marker write had not happened
        location.fs.delete_dir(marker_dir(location, kafka_topic.name, p))
    assert committed_snapshot(location) == ()

    consumer.start()
    assert consumer.wait() == 0, consumer.log()[-3000:]
    assert not [e for e in consumer.events() if e["msg"].startswith("committed")], "nothing was left to commit"
    markers = {p: m.committed_offset for (_, p), m in read_markers(location).items()}
    assert markers == committed
    assert sum(f.rows for f in committed_snapshot(location)) == len(read_output(uri, kafka_topic.name).rows)
