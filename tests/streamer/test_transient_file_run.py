"""File runs under passing causes: an LLM server that goes away and comes back, 429s and 5xx in numbers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from devtools.fakeopenai import FakeOpenAI, FaultKind
from tests.support.documents import consume_file, page, read_outcomes, write_jsonl


def _consume(source: Path, output: Path, server: FakeOpenAI, *extra: str):
    flags = ["--max-concurrency", "8", "--roll-records", "10", "--log-format", "json", "--no-progress"]
    return consume_file(source, output, server.url, *flags, *extra)


def test_server_gone_for_seconds_mid_run_every_document_becomes_a_row(
    tmp_path: Path, fake_llm_factory: Callable[..., FakeOpenAI]
) -> None:
    llm = fake_llm_factory(latency_s=(0.05, 0.15))
    docs = [{"id": f"doc-{i}", "webpage": page(i)} for i in range(40)]
    outage: dict[str, float] = {}

    def stop_then_restart() -> None:
        deadline = time.monotonic() + 60
        while len(llm.records) < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        llm.stop()
        outage["answered_before"] = len(llm.records)
        time.sleep(8.0)
        llm.start()

    chaos = threading.Thread(target=stop_then_restart)
    chaos.start()
    result = _consume(write_jsonl(tmp_path / "docs.jsonl", docs), tmp_path / "out", llm)
    chaos.join()
    assert result.returncode == 0, result.stderr[-3000:]
    rows, rejected = read_outcomes(tmp_path / "out")
    assert rejected == []
    assert sorted(r["doc_id"] for r in rows) == sorted(d["id"] for d in docs)
    assert outage["answered_before"] < 3 * len(docs), "the outage came after the run's work"
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [e["breaker"] for e in events if "breaker" in e] == ["open", "closed"]


def test_a_replica_stopped_mid_run_loses_nothing_and_takes_calls_again_once_restarted(
    tmp_path: Path, fake_llm_factory: Callable[..., FakeOpenAI]
) -> None:
    """Two replicas; one stops early in the run and comes back on the same port 3 s later."""
    steady, flaky = fake_llm_factory(latency_s=(0.1, 0.2)), fake_llm_factory(latency_s=(0.1, 0.2))
    docs = [{"id": f"doc-{i}", "webpage": page(i)} for i in range(120)]
    seen: dict[str, int] = {}

    def stop_then_restart() -> None:
        deadline = time.monotonic() + 60
        while len(steady.records) + len(flaky.records) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        flaky.stop()
        seen["flaky_before"] = len(flaky.records)
        time.sleep(3.0)
        flaky.start()
        seen["flaky_restarted"] = len(flaky.records)

    chaos = threading.Thread(target=stop_then_restart)
    chaos.start()
    result = _consume(write_jsonl(tmp_path / "docs.jsonl", docs), tmp_path / "out", steady, "--base-url", flaky.url)
    chaos.join()
    assert result.returncode == 0, result.stderr[-3000:]
    rows, rejected = read_outcomes(tmp_path / "out")
    assert rejected == []
    assert sorted(r["doc_id"] for r in rows) == sorted(d["id"] for d in docs)
    assert seen["flaky_before"] > 0, "the replica took no calls before it stopped"
    assert len(flaky.records) > seen["flaky_restarted"], "the restarted replica got no traffic"
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [(e["endpoint"], e["breaker"]) for e in events if "breaker" in e] == [
        (flaky.url, "open"),
        (flaky.url, "closed"),
    ]


def test_429s_and_server_errors_in_numbers_reject_nothing(
    tmp_path: Path, fake_llm_factory: Callable[..., FakeOpenAI]
) -> None:
    """A third of the answers are 429s or 5xx: the run is slower, and every document still becomes a row."""
    llm = fake_llm_factory(fault_rates={FaultKind.RATE_LIMIT: 0.2, FaultKind.SERVER_ERROR: 0.15})
    docs = [{"id": f"doc-{i}", "webpage": page(i)} for i in range(20)]
    result = _consume(write_jsonl(tmp_path / "docs.jsonl", docs), tmp_path / "out", llm)
    assert result.returncode == 0, result.stderr[-3000:]
    rows, rejected = read_outcomes(tmp_path / "out")
    assert rejected == []
    assert len(rows) == len(docs)
    statuses = [r.status for r in llm.records]
    assert statuses.count(429) >= 5 and sum(s >= 500 for s in statuses) >= 5
    # every attempt, failed ones included, is accounted to a document
    assert sum(r["llm_attempts"] for r in rows) == len(statuses)
