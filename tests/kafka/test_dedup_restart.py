"""The dedup index is in memory; a restarted consumer must still reject a near-duplicate of a committed row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumers.webr.processor import WebRSettings
from devtools.fakeopenai import FakeOpenAI
from devtools.tansu import KafkaTopic
from tests.kafka.helpers import Consumer, documents, page, read_output
from tests.support.plans import plan_of

pytestmark = pytest.mark.timeout(180)

SEED = 7
SAME_REQUEST = (
    "Write a practical guide for first-time visitors explaining how the DUPMARK harbour ferry timetable changes "
    "between the summer and winter seasons and where to buy tickets."
)


def dup_text(i: int) -> str:
    return f"DUPMARK {page(i)}"


def same_branch_ids() -> tuple[str, str]:
    """Two document ids (carrying `dup_text(900)` and `dup_text(901)`) whose plans fall in the same branch, drawn
    as the engine draws them (dedup indexes are per branch)."""
    settings = WebRSettings(seed=SEED)
    first = "dup-0"
    branch = plan_of(first, dup_text(900), settings).category.branch
    second = next(
        f"dup-{i}" for i in range(1, 40) if plan_of(f"dup-{i}", dup_text(901), settings).category.branch == branch
    )
    return first, second


def test_near_duplicate_of_a_committed_row_is_rejected_after_a_restart(
    kafka_topic: KafkaTopic, fake_llm: FakeOpenAI, tmp_path: Path, consumers: list[Consumer]
) -> None:
    fake_llm.responder = lambda messages: SAME_REQUEST if "DUPMARK" in messages[-1]["content"] else None
    first, second = same_branch_ids()
    out_uri = str(tmp_path / "out")

    def doc(doc_id: str, i: int) -> tuple[bytes, bytes]:
        return doc_id.encode(), json.dumps({"id": doc_id, "text": dup_text(i)}).encode()

    kafka_topic.produce([*documents(5), doc(first, 900)])
    consumer = Consumer(kafka_topic, out_uri, fake_llm.url, tmp_path, "--stop-after-idle", "3", "--seed", str(SEED))
    consumers.append(consumer.start())
    assert consumer.wait() == 0, consumer.log()[-3000:]
    rows = {r["doc_id"]: r for r in read_output(out_uri, kafka_topic.name).rows}
    assert rows[first]["request"] == SAME_REQUEST

    kafka_topic.produce([doc(second, 901), *documents(3, start=5)])
    assert consumer.start().wait() == 0, consumer.log()[-3000:]
    assert "committed rows loaded" in consumer.log()
    out = read_output(out_uri, kafka_topic.name)
    rejected = {r["doc_id"]: r for r in out.rejected}
    assert rejected[second]["reason"] == "near_duplicate_request", "the restarted consumer forgot the first row"
    assert max(out.doc_ids.values()) == 1 and len(out.doc_ids) == 10
