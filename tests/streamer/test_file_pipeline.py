"""A file run in-process through the shared pipeline, with the scripted chat client: dedup in offset order,
rejections carrying their input line, and the summary and progress counted once."""

from __future__ import annotations

import json
from pathlib import Path

from consumers.webr.dedup import DedupStage
from consumers.webr.processor import DocumentProcessor
from streamer.engine import Engine
from streamer.files import run_file
from streamer.metrics import RunSummary
from streamer.settings import ConsumeSettings
from tests.support.chat import ScriptedChatClient
from tests.support.documents import page, read_outcomes, write_jsonl
from tests.support.plans import plan_of

SEED = 3
SAME_REQUEST = "Explain how the harbour ferry timetable changes in winter for a visitor arriving for the first time."


async def test_file_run_dedups_in_offset_order_and_accounts_for_every_record(tmp_path: Path) -> None:
    docs = [{"id": f"doc-{i}", "webpage": page(i)} for i in range(10)]
    lines = [line.rstrip("\n") for line in write_jsonl(tmp_path / "p.jsonl", docs).read_text().splitlines()]
    source = write_jsonl(tmp_path / "p.jsonl", docs, ["not json"])
    settings = ConsumeSettings(
        source=str(source),
        output=str(tmp_path / "out"),
        roll_records=3,
        max_in_flight_docs=4,
        seed=SEED,
        base_url="http://127.0.0.1:1/v1",  # a scripted client: no server, no key
    )
    client = ScriptedChatClient({"request": [SAME_REQUEST] * len(docs)})
    engine = Engine(DocumentProcessor(client, settings.webr), DedupStage(settings.webr.dedup()))
    progress: list[int] = []

    def on_progress(seen: RunSummary) -> None:
        progress.append(seen.records)

    summary = await run_file(settings, engine, on_progress=on_progress)

    rows, rejected = read_outcomes(tmp_path / "out")
    branches = {d["id"]: plan_of(d["id"], d["webpage"], settings.webr).category.branch for d in docs}
    first_of_branch = {b: next(i for i in branches if branches[i] == b) for b in set(branches.values())}
    assert sorted(r["doc_id"] for r in rows) == sorted(first_of_branch.values())
    duplicates = [r for r in rejected if r["reason"] == "near_duplicate_request"]
    assert sorted(r["doc_id"] for r in duplicates) == sorted(set(branches) - set(first_of_branch.values()))
    for r in duplicates:
        assert r["stage"] == "dedup"
        assert r["payload"] == lines[r["source_offset"]].encode(), "a rejection carries its input line"
    (invalid,) = [r for r in rejected if r["stage"] == "input"]
    assert (invalid["reason"], invalid["payload"], invalid["source_offset"]) == ("not_json", b"not json", 10)

    assert (summary.records, summary.rows) == (11, len(first_of_branch))
    assert summary.rejections == {("dedup", "near_duplicate_request"): len(duplicates), ("input", "not_json"): 1}
    assert summary.calls == len(client.results) == sum(r["llm_calls"] or 0 for r in rows + rejected)
    assert summary.files == 4, "11 offsets in ranges of 3 (a range's rows and rejections count as one)"
    assert progress == sorted(progress) and progress[-1] == 11, "progress follows the outcomes written"


async def test_a_record_too_deep_to_write_back_is_rejected_as_input_and_the_run_goes_on(tmp_path: Path) -> None:
    nested = "[" * 300 + "]" * 300
    deep = f'{{"id": "deep", "webpage": {json.dumps(page(1))}, "extra": {nested}}}'
    source = write_jsonl(tmp_path / "p.jsonl", [{"id": "fine", "webpage": page(2)}], [deep])
    settings = ConsumeSettings(
        source=str(source), output=str(tmp_path / "out"), seed=SEED, base_url="http://127.0.0.1:1/v1"
    )
    client = ScriptedChatClient()
    engine = Engine(DocumentProcessor(client, settings.webr), DedupStage(settings.webr.dedup()))

    summary = await run_file(settings, engine)

    rows, rejected = read_outcomes(tmp_path / "out")
    assert [r["doc_id"] for r in rows] == ["fine"]
    ((invalid),) = rejected
    assert (invalid["stage"], invalid["reason"], invalid["doc_id"]) == ("input", "unserialisable_metadata", "deep")
    assert invalid["payload"] == deep.encode(), "the rejection carries the record as it came"
    assert {c.affinity for c in client.calls} == {"fine"}, "no call is paid for a record that cannot be written"
    assert summary.records == 2
