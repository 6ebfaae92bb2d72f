"""The LLM server gone mid-run: documents wait and resume, none is dead-lettered, the member keeps its partitions."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.fakeopenai import FakeOpenAI
from devtools.tansu import KafkaTopic
from tests.kafka.helpers import Consumer, documents, read_output, wait_committed

pytestmark = pytest.mark.timeout(300)

OUTAGE_S = 12.0


def test_llm_server_stopped_mid_run_every_document_becomes_a_row(
    make_topic: Callable[..., KafkaTopic],
    fake_llm_factory: Callable[..., FakeOpenAI],
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """120 documents on 2 partitions; the server stops after the first commits and comes back 12 s later."""
    topic = make_topic(partitions=2)
    llm = fake_llm_factory(latency_s=(0.05, 0.2))
    docs = documents(120)
    topic.produce(docs)
    out_uri = str(tmp_path / "out")
    consumer = Consumer(topic, out_uri, llm.url, tmp_path, "--stop-after-idle", "5")
    consumers.append(consumer.start())
    wait_committed(topic, 10)
    llm.stop()
    stopped = time.monotonic()
    time.sleep(OUTAGE_S)
    committed_during = sum(c or 0 for c in topic.committed().values())
    llm.start()  # the same port: the server restarting
    assert consumer.wait(180) == 0, consumer.log()[-3000:]

    out = read_output(out_uri, topic.name)
    assert out.rejected == [], [(r["doc_id"], r["reason"]) for r in out.rejected[:5]]
    assert sorted(r["doc_id"] for r in out.rows) == sorted(k.decode() for k, _ in docs)
    assert sum(topic.committed().values()) == len(docs)  # type: ignore[arg-type]
    assert committed_during < len(docs), "the outage came too late to test anything"
    events = consumer.events()
    opened = [e for e in events if e.get("breaker") == "open"]
    closed = [e for e in events if e.get("breaker") == "closed"]
    assert len(opened) == 1 and len(closed) == 1, [e["msg"] for e in opened + closed]
    assert OUTAGE_S - 2 <= closed[0]["outage_s"] <= time.monotonic() - stopped
    # the member stayed in the group through the outage: assigned once, nothing lost (it revokes on leaving)
    assert len([e for e in events if e["msg"].startswith("assigned partitions")]) == 1
    assert not [e for e in events if e["msg"].startswith("lost partitions")]
    # Documents resumed at the call that failed: the server answered each completed call once, plus at most the
    # replies it computed for requests in flight when it stopped (their connections died before the answer).
    answered = sum(r.status == 200 for r in llm.records)
    used = sum(r["llm_calls"] for r in out.rows)
    assert used <= answered <= used + 16


def test_one_of_two_replicas_stopped_mid_run_every_document_becomes_a_row(
    make_topic: Callable[..., KafkaTopic],
    fake_llm_factory: Callable[..., FakeOpenAI],
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """180 documents, two replicas; one stops after the first commits and is back on its port 3 s later."""
    topic = make_topic(partitions=2)
    steady, flaky = fake_llm_factory(latency_s=(0.2, 0.4)), fake_llm_factory(latency_s=(0.2, 0.4))
    docs = documents(180)
    topic.produce(docs)
    out_uri = str(tmp_path / "out")
    consumer = Consumer(topic, out_uri, f"{steady.url},{flaky.url}", tmp_path, "--stop-after-idle", "5")
    consumers.append(consumer.start())
    wait_committed(topic, 10)
    flaky.stop()
    time.sleep(3.0)
    flaky.start()
    restarted_with = len(flaky.records)
    assert consumer.wait(180) == 0, consumer.log()[-3000:]

    out = read_output(out_uri, topic.name)
    assert out.rejected == [], [(r["doc_id"], r["reason"]) for r in out.rejected[:5]]
    assert sorted(r["doc_id"] for r in out.rows) == sorted(k.decode() for k, _ in docs)
    assert sum(topic.committed().values()) == len(docs)  # type: ignore[arg-type]
    breaker = [(e["endpoint"], e["breaker"]) for e in consumer.events() if "breaker" in e]
    assert breaker == [(flaky.url, "open"), (flaky.url, "closed")]
    assert len(flaky.records) > restarted_with, "the restarted replica got no traffic"
