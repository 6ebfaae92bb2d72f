"""Snapshots, manifests and the frozen training set, on real Parquet files (no model, fast)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.storage import resolve
from trainer.data import build_training_set, message_problem
from trainer.exceptions import DataError, DataFileError, EmptySnapshot
from trainer.snapshot import Manifest, diff, take_snapshot

from .conftest import chat, pairs_table, write_pairs, write_rows


def test_only_complete_data_files_are_in_the_snapshot(tmp_path: Path) -> None:
    """`_rejected/`, temp files (`.tmp-*`), `_*` metadata and non-Parquet files never reach training."""
    write_pairs(tmp_path, 0, 3)
    write_pairs(tmp_path, 3, 2, subdir="webr/1")
    write_pairs(tmp_path, 0, 5, subdir="_rejected/webr/0")
    (tmp_path / "webr/0/.tmp-abc-webr+0+9.parquet").write_bytes(b"half a file")
    (tmp_path / "webr/0/_SUCCESS.parquet").write_bytes(b"")
    (tmp_path / "webr/0/notes.txt").write_text("not data")
    manifest, bad = take_snapshot(resolve(str(tmp_path)))
    assert [f.path for f in manifest.files] == [
        "webr/0/webr+0+00000000000000000000.parquet",
        "webr/1/webr+0+00000000000000000003.parquet",
    ]
    assert manifest.rows == 5
    assert bad == []


def test_snapshot_id_is_stable_and_follows_content(tmp_path: Path) -> None:
    write_pairs(tmp_path, 0, 3)
    loc = resolve(str(tmp_path))
    first, _ = take_snapshot(loc)
    again, _ = take_snapshot(loc, first)
    assert again.snapshot_id == first.snapshot_id
    assert Manifest.from_dict(first.to_dict()).snapshot_id == first.snapshot_id
    write_pairs(tmp_path, 0, 4)  # the same key rewritten with other rows: new content, new snapshot
    changed, _ = take_snapshot(loc, first)
    assert changed.snapshot_id != first.snapshot_id
    assert diff(changed, first).new_rows == 4


def test_diff_counts_rows_of_new_files_only(tmp_path: Path) -> None:
    loc = resolve(str(tmp_path))
    write_pairs(tmp_path, 0, 3)
    before, _ = take_snapshot(loc)
    write_pairs(tmp_path, 3, 2)
    after, _ = take_snapshot(loc, before)
    changes = diff(after, before)
    assert (changes.new_rows, changes.old_rows) == (2, 3)
    assert diff(after, None).new_rows == 5


def test_empty_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmptySnapshot, match="no complete Parquet file"):
        take_snapshot(resolve(str(tmp_path / "missing")))
    pq.write_table(pairs_table([]), tmp_path / "empty.parquet")
    with pytest.raises(EmptySnapshot, match="hold no row"):
        take_snapshot(resolve(str(tmp_path)))


def test_corrupt_file_fails_the_snapshot_or_is_skipped_when_asked(tmp_path: Path) -> None:
    write_pairs(tmp_path, 0, 3)
    bad = tmp_path / "webr/0/webr+0+00000000000000000003.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(DataFileError, match=r"webr\+0\+00000000000000000003\.parquet: unreadable Parquet"):
        take_snapshot(resolve(str(tmp_path)))
    manifest, skipped = take_snapshot(resolve(str(tmp_path)), skip_bad_files=True)
    assert manifest.rows == 3
    assert [b.path for b in skipped] == ["webr/0/webr+0+00000000000000000003.parquet"]


def test_file_without_messages_column_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["hello"]}), tmp_path / "other.parquet")
    with pytest.raises(DataFileError, match="no `messages` column"):
        take_snapshot(resolve(str(tmp_path)))


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (None, "messages_null"),
        ([], "messages_empty"),
        ([{"role": "user", "content": "hi"}], "last_turn_not_assistant"),
        ([{"role": "assistant", "content": "hi"}], "first_turn_not_user"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "empty_content"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "empty_content"),
        ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], "unknown_role"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
            "turns_not_alternating",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            "system_turn_not_first",
        ),
        ([{"role": "system", "content": "s"}, *chat(1)], None),
        (chat(1), None),
    ],
)
def test_message_problems_have_stable_codes(messages: object, reason: str | None) -> None:
    assert message_problem(messages) == reason


def test_malformed_rows_are_skipped_counted_and_the_rest_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = [
        chat(0),
        [],
        [{"role": "user", "content": "only a question"}],
        chat(3),
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
    ]
    write_rows(data, 0, rows)
    loc = resolve(str(data))
    manifest, _ = take_snapshot(loc)
    out = tmp_path / "train.parquet"
    tset = build_training_set(loc, diff(manifest, None), out, replay_sample=False, replay_ratio=0, seed="s")
    assert tset.rows == 2
    assert tset.skipped == {"messages_empty": 1, "last_turn_not_assistant": 1, "empty_content": 1}
    assert [e["row"] for e in tset.skipped_examples] == [1, 2, 4]
    trained = pq.read_table(out)
    assert trained.column("source_row").to_pylist() == [0, 3]
    assert trained.column("messages").to_pylist() == [chat(0), chat(3)]


def test_only_malformed_rows_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    pq.write_table(pairs_table([None, []]), tmp_path / "d/a.parquet")
    loc = resolve(str(tmp_path / "d"))
    manifest, _ = take_snapshot(loc)
    with pytest.raises(DataError, match="no valid row"):
        build_training_set(
            loc, diff(manifest, None), tmp_path / "t.parquet", replay_sample=False, replay_ratio=0, seed="s"
        )
    assert not (tmp_path / "t.parquet").exists()


def test_replay_sample_is_sized_by_ratio_and_seeded(tmp_path: Path) -> None:
    loc = resolve(str(tmp_path / "d"))
    write_pairs(tmp_path / "d", 0, 40)
    old, _ = take_snapshot(loc)
    write_pairs(tmp_path / "d", 40, 10)
    new, _ = take_snapshot(loc, old)

    def build(name: str, seed: str) -> list[str]:
        tset = build_training_set(loc, diff(new, old), tmp_path / name, replay_sample=True, replay_ratio=0.5, seed=seed)
        assert (tset.rows_from_new_files, tset.rows_from_old_files) == (10, 5)
        return pq.read_table(tmp_path / name).column("doc_id").to_pylist()

    first, same, other = build("a.parquet", "snap1"), build("b.parquet", "snap1"), build("c.parquet", "snap2")
    assert first[:10] == [f"doc_id-{i}" for i in range(40, 50)]
    assert all(int(d.split("-")[1]) < 40 for d in first[10:])
    assert first == same
    assert first != other
