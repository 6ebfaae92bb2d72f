"""The Parquet sink on a local disk: keys, roll, read-back, replay without doubles."""

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.keys import file_name
from core.outcomes import PairRow, Rejection, SourceRef, Usage
from core.schema import PAIRS_SCHEMA, REJECTED_SCHEMA
from core.storage import resolve
from streamer.sinks.parquet import ParquetSink, RollPolicy

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def row(offset: int, ts: int | None = None) -> PairRow:
    ref = SourceRef("t", 0, offset, ts)
    return PairRow(
        f"d{offset}",
        "pid",
        "question?",
        "answer.",
        "question?",
        "WR",
        "WR_all",
        "persona",
        None,
        "m",
        "v1",
        0,
        10,
        False,
        Usage(4, 100, 50, 0, 0.01),
        ref,
        NOW,
    )


def rejection(offset: int, ts: int | None = None) -> Rejection:
    return Rejection(f"d{offset}", "request", "refused_request", "I'm sorry", SourceRef("t", 0, offset, ts), NOW)


def read_ids(root: Path, sub: str = "t") -> list[str]:
    return sorted(
        doc for f in sorted((root / sub).rglob("*.parquet")) for doc in pq.read_table(f).column("doc_id").to_pylist()
    )


def test_roll_on_record_count_and_read_back(tmp_path: Path) -> None:
    sink = ParquetSink(resolve(str(tmp_path)), RollPolicy(max_records=3))
    sink.setup()
    sink.open("t", 0, 7)
    written = []
    for i in range(7):
        written += sink.add("t", 0, i, rejection(i) if i % 3 == 1 else row(i))
    assert [(w.start_offset, w.end_offset) for w in written] == [(0, 3), (3, 6)]
    written += sink.flush()
    assert [(w.start_offset, w.end_offset) for w in written][-1] == (6, 7)
    names = [file_name("t", 0, o, e, 7) for o, e in ((0, 3), (3, 6), (6, 7))]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == names
    assert read_ids(tmp_path) == ["d0", "d2", "d3", "d5", "d6"]
    assert read_ids(tmp_path, "_rejected/t") == ["d1", "d4"]
    table = pq.read_table(tmp_path / "t" / names[0])
    assert table.schema.remove_metadata() == PAIRS_SCHEMA
    assert (table.schema.metadata[b"webr.end_offset"], table.schema.metadata[b"webr.generation"]) == (b"3", b"7")
    assert table.column("messages").to_pylist()[0] == [
        {"role": "user", "content": "question?"},
        {"role": "assistant", "content": "answer."},
    ]
    rej = pq.read_table(tmp_path / "_rejected" / "t" / names[0])
    assert rej.schema.remove_metadata() == REJECTED_SCHEMA
    assert not list(tmp_path.rglob(".tmp-*")), "temporary files must not stay visible"


def test_a_rejection_keeps_its_llm_usage_cost_and_cached_tokens_included(tmp_path: Path) -> None:
    """A document rejected after paid LLM calls (bad output, refusal) costs what a row does: summing the output's
    cost must reach the run's, so its file carries the cost and the cached tokens, None when unpriced."""
    sink = ParquetSink(resolve(str(tmp_path)), RollPolicy(max_records=10))
    sink.setup()
    sink.open("t", 0, 1)
    paid = replace(rejection(0), usage=Usage(3, 900, 200, 640, 0.0042, attempts=4))
    unpriced = replace(rejection(1), usage=Usage(1, 300, 50, 0, None, attempts=1))
    for i, r in enumerate((paid, unpriced)):
        sink.add("t", 0, i, r)
    sink.flush()
    (f,) = (tmp_path / "_rejected" / "t").rglob("*.parquet")
    got = pq.read_table(f).to_pylist()
    assert [(r["llm_calls"], r["prompt_tokens"], r["cached_tokens"], r["cost_usd"]) for r in got] == [
        (3, 900, 640, 0.0042),
        (1, 300, 0, None),
    ]


def test_a_file_of_many_outcomes_holds_each_once_in_offset_order(tmp_path: Path) -> None:
    """Outcomes are converted to Arrow in batches as they arrive; the file holds every one once, in order, with
    the counts of what it holds."""
    sink = ParquetSink(resolve(str(tmp_path)), RollPolicy(max_records=1000))
    sink.open("t", 0, 0)
    n = 205  # several batches of each kind and a part batch
    for i in range(n):
        sink.add("t", 0, i, rejection(i) if i % 3 == 0 else row(i))
    [written] = sink.flush()
    assert (written.rows, written.rejections) == (n - 69, 69)
    rows = pq.read_table(tmp_path / "t" / file_name("t", 0, 0, n, 0))
    rejected = pq.read_table(tmp_path / "_rejected" / "t" / file_name("t", 0, 0, n, 0))
    assert rows.column("doc_id").to_pylist() == [f"d{i}" for i in range(n) if i % 3]
    assert rejected.column("doc_id").to_pylist() == [f"d{i}" for i in range(0, n, 3)]
    assert rows.column("source_offset").to_pylist() == [i for i in range(n) if i % 3]


def test_a_range_written_again_keeps_no_file_of_the_other_kind(tmp_path: Path) -> None:
    """A file run replayed after a crash rewrites the same keys; a kind the range no longer has is removed."""
    for outcome_of_3 in (rejection, row):
        sink = ParquetSink(resolve(str(tmp_path)), RollPolicy(max_records=10))
        sink.open("t", 0, 0)
        for i in range(3):
            sink.add("t", 0, i, row(i))
        sink.add("t", 0, 3, outcome_of_3(3))
        [written] = sink.flush()
    assert read_ids(tmp_path) == ["d0", "d1", "d2", "d3"]
    assert written.keys == (str(tmp_path / "t" / file_name("t", 0, 0, 4, 0)),)
    assert not (tmp_path / "_rejected" / "t" / file_name("t", 0, 0, 4, 0)).exists()


def test_a_partition_is_written_only_once_opened_and_only_until_discarded(tmp_path: Path) -> None:
    sink = ParquetSink(resolve(str(tmp_path)))
    with pytest.raises(KeyError, match="not opened"):
        sink.add("t", 0, 0, row(0))
    sink.open("t", 0, 3)
    sink.add("t", 0, 0, row(0))
    sink.discard([("t", 0)])
    assert sink.flush() == []
    with pytest.raises(KeyError, match="not opened"):
        sink.add("t", 0, 1, row(1))


def test_record_time_roll_and_date_partition(tmp_path: Path) -> None:
    sink = ParquetSink(resolve(str(tmp_path)), RollPolicy(max_records=100, max_record_time_ms=60_000))
    sink.open("t", 0, 0)
    day = 1_764_000_000_000  # 2025-11-24
    out = []
    for i, ts in enumerate([day, day + 30_000, day + 61_000, day + 62_000]):
        out += sink.add("t", 0, i, row(i, ts))
    assert [(w.start_offset, w.end_offset) for w in out] == [(0, 2)]
    out += sink.flush()
    assert all("/dt=2025-11-24/" in k for w in out for k in w.keys)


def test_offsets_must_be_contiguous(tmp_path: Path) -> None:
    sink = ParquetSink(resolve(str(tmp_path)))
    sink.open("t", 0, 0)
    sink.add("t", 0, 5, row(5))
    with pytest.raises(ValueError, match="offset 7"):
        sink.add("t", 0, 7, row(7))
    sink.skip("t", 0, 6)
    sink.add("t", 0, 7, row(7))
    assert sink.buffered_records() == 3
