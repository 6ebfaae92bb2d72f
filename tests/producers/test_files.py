"""`python -m producers.files` against a real broker: what lands on the topic, and what is reported instead."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from core.records import parse_message, text_doc_id
from core.topics import partition_count
from devtools.tansu import KafkaTopic, TansuBroker
from producers.files import main, make_parser, make_producer
from producers.settings import FilesSettings
from tests.support.documents import REPO

GOOD = [
    {"id": "a1", "url": "https://example.org/a", "text": "Alpha page about gardens.", "lang": "en"},
    {"webpage": "Bravo page with no id: its id is a hash of the text."},
    {"id": 7, "text": "Charlie page with an integer id."},
]


def _jsonl_with_bad_lines(path: Path) -> Path:
    lines = [
        orjson.dumps(GOOD[0]),
        b"{not json",
        orjson.dumps({"id": "no-text"}),
        orjson.dumps(GOOD[1]),
        orjson.dumps({"id": "empty", "text": "   "}),
        orjson.dumps(["a", "list"]),
        orjson.dumps({"id": "bin", "text": "x\x00y"}),
        orjson.dumps(GOOD[2]),
        orjson.dumps(GOOD[0]),  # exact duplicate of line 1
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _fresh(broker: TansuBroker) -> KafkaTopic:
    """A topic name that does not exist yet: the producer must create it."""
    suffix = uuid.uuid4().hex[:10]
    return KafkaTopic(f"p-{suffix}", f"g-{suffix}", 3, broker)


def _summary(out: str) -> dict[str, object]:
    return orjson.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_valid_records_are_keyed_by_doc_id_and_invalid_ones_reported(
    kafka_broker: TansuBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Creates the 3-partition topic, sends each valid document once, keyed by doc_id; reports bad lines."""
    topic = _fresh(kafka_broker)
    path = _jsonl_with_bad_lines(tmp_path / "pages.jsonl")
    code = main(["--bootstrap-servers", topic.bootstrap, "--topic", topic.name, "--partitions", "3", str(path)])
    out, err = capsys.readouterr()
    assert code == 0
    summary = _summary(out)
    assert (summary["records"], summary["produced"], summary["invalid"], summary["duplicates"]) == (9, 3, 5, 1)
    assert summary["invalid_reasons"] == {
        "not_json": 1,
        "missing_text": 1,
        "empty_text": 1,
        "not_an_object": 1,
        "binary_text": 1,
    }
    for where in ("line 2: not_json", "line 3: missing_text", "line 5: empty_text", "line 7: binary_text"):
        assert f"invalid record at {where}" in err
    assert partition_count(topic.bootstrap, topic.name) == 3

    records = topic.read(3)
    docs = {r.key.decode(): parse_message(r.value) for r in records}
    assert set(docs) == {"a1", text_doc_id(GOOD[1]["webpage"]), "7"}
    assert docs["a1"].url == "https://example.org/a"
    assert docs["a1"].metadata == {"lang": "en"}
    assert len(records) == 3


def test_json_array_from_stdin_and_same_key_same_partition(
    kafka_broker: TansuBroker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-` reads a JSON array from a pipe (which cannot seek); a key always maps to one partition."""
    topic = _fresh(kafka_broker)
    pages = [{"id": f"d{i}", "text": f"page number {i}"} for i in range(30)]
    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(b"  \n" + orjson.dumps(pages))))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["--bootstrap-servers", topic.bootstrap, "--topic", topic.name, "-"]) == 0
    assert _summary(capsys.readouterr().out)["produced"] == 30
    first = {r.key: r.partition for r in topic.read(30)}
    assert set(first) == {f"d{i}".encode() for i in range(30)}
    assert len(set(first.values())) > 1, "30 keys all on one partition: not keyed"

    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(b"\n".join(orjson.dumps(p) for p in pages))))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["--bootstrap-servers", topic.bootstrap, "--topic", topic.name, "-"]) == 0
    again = topic.read(60)
    assert len(again) == 60
    assert all(first[r.key] == r.partition for r in again)


def test_strict_stops_at_first_invalid_record(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    """--strict turns an invalid record into exit code 2, naming where it was."""
    topic = _fresh(kafka_broker)
    path = _jsonl_with_bad_lines(tmp_path / "pages.jsonl")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "producers.files",
            "--bootstrap-servers",
            topic.bootstrap,
            "--topic",
            topic.name,
            "--strict",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "line 2: not_json" in proc.stderr


def test_broken_json_array_is_reported_and_fails_the_run(
    kafka_broker: TansuBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated array cannot be resynchronised: what came before is sent, the file is reported, exit 1."""
    topic = _fresh(kafka_broker)
    path = tmp_path / "broken.json"
    path.write_bytes(b'[{"id": "ok", "text": "fine page"}, {"id": "cut", "text": "trunc')
    assert main(["--bootstrap-servers", topic.bootstrap, "--topic", topic.name, str(path)]) == 1
    out, err = capsys.readouterr()
    assert _summary(out)["unreadable_files"] == 1
    assert "broken.json: unreadable after 1 records" in err
    assert [r.key for r in topic.read(1)] == [b"ok"]


def test_large_page_and_producer_guarantees(
    make_topic: Callable[..., KafkaTopic], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 3 MB page fits (max request size raised), and the producer is idempotent with acks=all."""
    topic = make_topic(1)
    big = "word " * (3 * 1024 * 1024 // 5)
    path = tmp_path / "big.jsonl"
    path.write_bytes(orjson.dumps({"id": "big", "text": big}) + b"\n")
    assert main(["--bootstrap-servers", topic.bootstrap, "--topic", topic.name, str(path)]) == 0
    assert _summary(capsys.readouterr().out)["produced"] == 1
    [record] = topic.read(1)
    assert parse_message(record.value).text == big

    args = make_parser().parse_args(["--bootstrap-servers", topic.bootstrap, "--topic", topic.name, "x"])
    producer = make_producer(FilesSettings.from_args(args).kafka)
    try:
        assert producer.config["enable_idempotence"] is True
        assert producer.config["acks"] == -1
        assert producer.config["compression_type"] == "gzip"
    finally:
        producer.close()


def test_sends_wait_for_acknowledgement_past_max_outstanding(make_topic: Callable[..., KafkaTopic]) -> None:
    """With a linger far longer than the test, records reach the topic while stdin is still open only because the
    producer waits for its sends once `--max-outstanding` are unacknowledged (unbounded, they sat in memory)."""
    topic = make_topic(1)
    args = ["--bootstrap-servers", topic.bootstrap, "--topic", topic.name, "--no-progress", "--linger-ms", "60000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "producers.files", *args, "--max-outstanding", "5", "-"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    try:
        for i in range(12):
            proc.stdin.write(orjson.dumps({"id": f"o{i}", "text": f"Outstanding page {i}."}) + b"\n")
        proc.stdin.flush()
        early = topic.read(5, timeout=20)
        assert proc.poll() is None
        assert len(early) >= 5
        out, err = proc.communicate(timeout=60)  # closes stdin: the end of the input
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert _summary(out.decode())["produced"] == 12
    assert sorted(r.key for r in topic.read(12)) == sorted(f"o{i}".encode() for i in range(12))
