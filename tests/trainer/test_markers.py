"""Exactly once into the model: a file the consumer published but never committed is never trained on, and its
rewrite by the partition's next owner is trained on once, on a local disk and on the S3 API server alike.

The consumer's death between upload and commit is played with the real parts in their real order: the sink
publishes a range, no commit (so no marker) follows, then the next owner's recovery (`clear_uncommitted` from
the committed offset) deletes the file and the sink writes the range again from other LLM output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyarrow import fs as pafs

from core.markers import CommitMarkers, advance_marker, marker_dir, marker_path, read_marker, read_markers
from core.outcomes import PairRow, Rejection, SourceRef, Usage
from core.storage import Location, resolve
from streamer.recovery import clear_uncommitted
from streamer.sinks.parquet import ParquetSink, RollPolicy, WrittenFile
from trainer.exceptions import EXIT_OK
from trainer.snapshot import Manifest, diff, take_snapshot

from .conftest import Dirs, rows_used

TOPIC = "pages"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(params=["local", "s3"])
def data(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Location, list[str]]]:
    """The consumer's output location and the trainer's arguments naming it: a directory or a fresh bucket."""
    if request.param == "local":
        yield resolve(str(tmp_path / "out"), create=True), ["--data", str(tmp_path / "out")]
    else:
        bucket = request.getfixturevalue("s3_bucket")
        uri = bucket.uri("out")
        yield (
            resolve(uri, s3_endpoint_url=bucket.endpoint_url),
            ["--data", uri, "--s3-endpoint-url", bucket.endpoint_url],
        )


def pair(offset: int, answer: str) -> PairRow:
    return PairRow(
        f"doc-{offset}", "pid", f"Explain garden number {offset} to a new reader.", answer, "request", "WR",
        "WR_all", "persona", None, "m", "v1", 0, 10, False, Usage(4, 100, 50, 0, 0.0), SourceRef(TOPIC, 0, offset),
        NOW,
    )  # fmt: skip


def write_range(loc: Location, start: int, end: int, answer: str | None, generation: int = 1) -> WrittenFile:
    """What an owner of partition 0 in `generation` publishes for offsets [start, end): one file through the
    real sink, of rows with `answer` (of rejections when None)."""
    sink = ParquetSink(loc, RollPolicy(max_records=end - start))
    sink.setup()
    sink.open(TOPIC, 0, generation)
    written = [
        f
        for offset in range(start, end)
        for f in sink.add(
            TOPIC,
            0,
            offset,
            pair(offset, answer)
            if answer is not None
            else Rejection(f"doc-{offset}", "request", "refused_request", "", SourceRef(TOPIC, 0, offset), NOW),
        )
    ]
    assert [(f.start_offset, f.end_offset) for f in written] == [(start, end)]
    return written[0]


def relative(loc: Location, written: WrittenFile) -> str:
    return written.keys[0][len(loc.root) + 1 :]


def test_markers_only_move_forward_and_are_published_whole(data: tuple[Location, list[str]]) -> None:
    loc, _ = data
    assert read_marker(loc, TOPIC, 0) is None
    assert advance_marker(loc, TOPIC, 0, 10, group="g").committed_offset == 10
    assert advance_marker(loc, TOPIC, 0, 4, group="g").committed_offset == 10, "a lower offset never lowers it"
    assert read_marker(loc, TOPIC, 0).committed_offset == 10  # type: ignore[union-attr]
    markers = CommitMarkers(loc, TOPIC, "g")
    markers.advance({0: 12, 3: 7})
    markers.advance({0: 11})
    assert {k: m.committed_offset for k, m in read_markers(loc).items()} == {(TOPIC, 0): 12, (TOPIC, 3): 7}
    stored = json.loads(loc.read_bytes(marker_path(loc, TOPIC, 0, 12)) or b"")
    assert (stored["stream"], stored["partition"], stored["committed_offset"], stored["group"]) == (TOPIC, 0, 12, "g")
    listed = loc.fs.get_file_info(pafs.FileSelector(loc.root, recursive=True))
    assert not [i.path for i in listed if i.base_name.startswith(".")], "no temporary left behind"
    assert [i.base_name for i in listed if i.path.startswith(marker_dir(loc, TOPIC, 0) + "/")] == [f"{12:020d}.json"], (
        "the keys of lower offsets are removed"
    )


def test_a_marker_write_that_arrives_late_never_moves_the_marker_back(data: tuple[Location, list[str]]) -> None:
    """Two owners racing across a rebalance, or a PUT delayed on the network: an older offset's marker lands
    after a newer one. It is a key of its own, lower than the newest, so readers keep the newest; the next
    advance removes it. A marker of an earlier version (one object per partition) still counts."""
    loc, _ = data
    advance_marker(loc, TOPIC, 0, 10, group="g")
    late = {"stream": TOPIC, "partition": 0, "committed_offset": 5, "group": "g", "updated_at": None}
    loc.publish(marker_path(loc, TOPIC, 0, 5), json.dumps(late).encode())
    assert read_marker(loc, TOPIC, 0).committed_offset == 10  # type: ignore[union-attr]
    assert read_markers(loc)[(TOPIC, 0)].committed_offset == 10
    legacy = {**late, "partition": 1, "committed_offset": 30}
    loc.publish(loc.path("_markers", TOPIC, "1.json"), json.dumps(legacy).encode())
    assert {k: m.committed_offset for k, m in read_markers(loc).items()} == {(TOPIC, 0): 10, (TOPIC, 1): 30}
    assert advance_marker(loc, TOPIC, 1, 40).committed_offset == 40
    assert read_markers(loc)[(TOPIC, 1)].committed_offset == 40
    advance_marker(loc, TOPIC, 0, 11)
    assert loc.read_bytes(marker_path(loc, TOPIC, 0, 5)) is None, "the late key is removed with the next advance"


def test_uncommitted_file_is_never_in_a_snapshot_and_its_rewrite_is_taken_once(
    data: tuple[Location, list[str]],
) -> None:
    loc, _ = data
    first = write_range(loc, 0, 5, "The first answer.")
    CommitMarkers(loc, TOPIC, "g").advance({0: 5})
    orphan = write_range(loc, 5, 10, "An answer that was never committed.")  # the owner dies before committing

    before, _ = take_snapshot(loc)
    assert [f.path for f in before.files] == [relative(loc, first)]
    assert before.held_back == (relative(loc, orphan),)
    assert [(m.stream, m.partition, m.committed_offset) for m in before.markers] == [(TOPIC, 0, 5)]
    assert Manifest.from_dict(before.to_dict()) == before

    assert clear_uncommitted(loc, TOPIC, {0: 5}, 2) == [orphan.keys[0]]  # the next owner starts at offset 5
    rewrite = write_range(loc, 5, 10, "The answer written again.", generation=2)
    unmarked, _ = take_snapshot(loc, before)
    assert unmarked.files == before.files, "published again, still not committed"
    CommitMarkers(loc, TOPIC, "g").advance({0: 10})

    after, _ = take_snapshot(loc, before)
    changes = diff(after, before)
    assert [f.path for f in changes.new] == [relative(loc, rewrite)]
    assert [f.path for f in changes.old] == [relative(loc, first)]
    assert after.held_back == ()
    again, _ = take_snapshot(loc, after)
    assert diff(again, after).new == (), "a committed file is taken once"


def test_a_file_its_writer_published_after_losing_the_partition_is_never_taken(
    data: tuple[Location, list[str]],
) -> None:
    """The zombie writer: the owner of generation 1 is cut off (from the broker, or its revocation commit is
    refused) and publishes offsets 5..7 after the owner of generation 2 cleared the uncommitted output. Generation
    2 writes 5..6 as rejections only and 7..9 as rows, and commits. No snapshot takes the late file, though its
    range is below the marker, and the partition's next owner removes it."""
    loc, _ = data
    first = write_range(loc, 0, 5, "The first answer.")
    CommitMarkers(loc, TOPIC, "g").advance({0: 5})
    assert clear_uncommitted(loc, TOPIC, {0: 5}, 2) == []  # generation 2 takes the partition at offset 5
    zombie = write_range(loc, 5, 8, "A late answer from generation 1.")
    write_range(loc, 5, 7, None, generation=2)
    rows = write_range(loc, 7, 10, "The answer of generation 2.", generation=2)
    CommitMarkers(loc, TOPIC, "g").advance({0: 10})

    snapshot, _ = take_snapshot(loc)
    assert [f.path for f in snapshot.files] == [relative(loc, first), relative(loc, rows)]
    assert snapshot.superseded == (relative(loc, zombie),) and snapshot.held_back == ()
    assert Manifest.from_dict(snapshot.to_dict()) == snapshot
    assert clear_uncommitted(loc, TOPIC, {0: 10}, 3) == [zombie.keys[0]]  # generation 3 takes it at offset 10
    assert take_snapshot(loc)[0].files == snapshot.files


def test_continue_policy_never_trains_on_both_versions_of_a_range(
    data: tuple[Location, list[str]], dirs: Dirs, run_inprocess: Callable[[list[str]], tuple[int, str]]
) -> None:
    loc, data_args = data
    write_range(loc, 0, 6, "Garden answers are green and long.")
    CommitMarkers(loc, TOPIC, "g").advance({0: 6})
    orphan = write_range(loc, 6, 12, "The first version, published and never committed.")
    args = [*dirs.args("--policy", "continue", "--min-new-rows", "1"), *data_args]

    code, line = run_inprocess(args)
    assert code == EXIT_OK, line
    first = run_metadata(dirs)
    assert rows_used(first) == 6, "trained or held out for the evaluation gate"
    assert relative(loc, orphan) in first["manifest"]["held_back"]
    assert [m["committed_offset"] for m in first["manifest"]["markers"]] == [6]
    orphan_sha = take_sha256(loc, orphan)

    clear_uncommitted(loc, TOPIC, {0: 6}, 2)
    rewrite = write_range(loc, 6, 12, "The second version, from the next owner.", generation=2)
    CommitMarkers(loc, TOPIC, "g").advance({0: 12})
    code, line = run_inprocess(args)
    assert code == EXIT_OK, line
    second = run_metadata(dirs)
    assert second["parent_run"] == first["run_id"] and second["start_model"].startswith("run:")
    assert second["rows"]["from_new_files"] == 6
    entries = {f["path"]: f["sha256"] for f in second["manifest"]["files"]}
    assert entries[relative(loc, rewrite)] == take_sha256(loc, rewrite) != orphan_sha
    trained_hashes = {f["sha256"] for meta in (first, second) for f in meta["manifest"]["files"]}
    assert orphan_sha not in trained_hashes, "the uncommitted version reached a model"


def run_metadata(dirs: Dirs) -> dict[str, Any]:
    return json.loads((dirs.out / str(dirs.latest()) / "training_metadata.json").read_text())


def take_sha256(loc: Location, written: WrittenFile) -> str:
    return hashlib.sha256(loc.read_bytes(written.keys[0]) or b"").hexdigest()
