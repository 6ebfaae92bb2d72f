"""Prometheus metrics on --metrics-port and JSON logs, scraped from a running consumer."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.fakeopenai import FakeOpenAI
from devtools.ports import free_port
from devtools.tansu import KafkaTopic, wait_for
from tests.kafka.helpers import Consumer, documents

pytestmark = pytest.mark.timeout(120)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples by (name, sorted labels); empty while the endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_metrics_count_what_the_consumer_did(
    kafka_topic: KafkaTopic, fake_llm: FakeOpenAI, tmp_path: Path, consumers: list[Consumer]
) -> None:
    kafka_topic.produce([*documents(20), (b"bad", b"not json")])
    fake_llm.configure(latency_s=0.15)
    port = free_port()
    consumer = Consumer(
        kafka_topic,
        str(tmp_path / "out"),
        fake_llm.url,
        tmp_path,
        "--metrics-port",
        str(port),
        "--stop-after-idle",
        "5",
    )
    consumers.append(consumer.start())

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        if sum(c or 0 for c in kafka_topic.committed().values()) != 21:
            return None
        samples = scrape(port)  # after the broker has the commit; the gauge follows the commit's return
        return samples if total(samples, "webr_committed_offset") == 21 else None

    samples = wait_for(settled, 60, "all 21 outcomes written and committed")
    assert isinstance(samples, dict)
    assert total(samples, "webr_documents_in_total") == 21
    assert total(samples, "webr_rejected_total", stage="input", reason="not_json") == 1
    assert (
        total(samples, "webr_documents_out_total", outcome="row")
        + total(samples, "webr_documents_out_total", outcome="rejected")
        == 21
    )
    assert total(samples, "webr_llm_calls_total", status="ok") == len([r for r in fake_llm.records if r.status == 200])
    assert total(samples, "webr_llm_tokens_total", kind="prompt") > 0
    ok_calls = len([r for r in fake_llm.records if r.status == 200])
    assert total(samples, "webr_llm_latency_seconds_bucket", le="+Inf") == ok_calls
    assert total(samples, "webr_llm_latency_seconds_count") == ok_calls
    assert total(samples, "webr_llm_latency_seconds_bucket", le="0.1") == 0  # every call took the server's 0.15 s
    assert total(samples, "webr_document_seconds_count") == 20
    assert total(samples, "webr_files_written_total") >= 3
    assert total(samples, "webr_bytes_written_total") > 0
    assert total(samples, "webr_documents_in_flight") == 0
    assert total(samples, "webr_partitions_assigned") == 3
    assert {dict(ls)["partition"] for (n, ls) in samples if n == "webr_consumer_lag"} == {"0", "1", "2"}
    assert total(samples, "webr_commits_total", result="ok") >= 1

    assert consumer.wait() == 0
    events = consumer.events()  # raises if any line is not a JSON object
    assert {"ts", "level", "logger", "msg"} <= set(events[0])
    assert any(e.get("reason") == "not_json" and e.get("offset") is not None for e in events)
