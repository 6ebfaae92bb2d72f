"""Commit markers: per stream and partition, the offset below which the output is committed and final.

A file of the output is published before the offsets it covers are committed, and a consumer that dies in
between leaves a file that the partition's next owner deletes and writes again, from new LLM calls. Readers
that must see each input once (the trainer) therefore take only the files that end at or below their
partition's marker, `<output>/_markers/<stream>/<partition>.json`, which the consumer moves forward after
every successful offset commit (a file run: once, at the end of a complete run), and that no later
generation's file supersedes (`core.keys.superseded`: a writer that had lost its partition published it). A
marker never moves back, and nothing below a committed offset is ever rewritten, so a file taken once never
changes.

A marker may lag its commit (its write failed, or the process died right after committing): that holds
files back until the next commit, never lets an uncommitted one through. Two owners of a partition racing
across a rebalance can, rarely, leave the lower of their two offsets; the next commit moves it forward again.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import orjson
from pyarrow import fs as pafs

from core.storage import Location

log = logging.getLogger(__name__)

MARKERS_DIR = "_markers"


@dataclass(frozen=True, slots=True)
class Marker:
    """Offsets of `stream`'s `partition` below `committed_offset` are committed (by consumer group `group`)."""

    stream: str
    partition: int
    committed_offset: int
    group: str | None = None
    updated_at: str | None = None

    def covers(self, end_offset: int) -> bool:
        """Whether a file ending at `end_offset` (exclusive) is wholly committed."""
        return end_offset <= self.committed_offset


def marker_path(location: Location, stream: str, partition: int) -> str:
    return location.path(MARKERS_DIR, stream, f"{partition}.json")


def _parse(data: bytes) -> Marker:
    raw = orjson.loads(data)
    return Marker(
        stream=str(raw["stream"]),
        partition=int(raw["partition"]),
        committed_offset=int(raw["committed_offset"]),
        group=raw.get("group"),
        updated_at=raw.get("updated_at"),
    )


def read_marker(location: Location, stream: str, partition: int) -> Marker | None:
    data = location.read_bytes(marker_path(location, stream, partition))
    return None if data is None else _parse(data)


def read_markers(location: Location) -> dict[tuple[str, int], Marker]:
    """Every marker under the location, by (stream, partition): one listing, then one read each."""
    selector = pafs.FileSelector(location.path(MARKERS_DIR), recursive=True, allow_not_found=True)
    found: dict[tuple[str, int], Marker] = {}
    for info in location.fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or info.base_name[0] in "._":
            continue
        data = location.read_bytes(info.path)
        if data is not None:
            marker = _parse(data)
            found[(marker.stream, marker.partition)] = marker
    return found


def advance_marker(
    location: Location, stream: str, partition: int, committed_offset: int, *, group: str | None = None
) -> Marker:
    """Move the marker of `stream`'s `partition` forward to `committed_offset`; a lower offset leaves it as it
    is. Returns the marker now stored."""
    current = read_marker(location, stream, partition)
    if current is not None and current.committed_offset >= committed_offset:
        return current
    marker = Marker(stream, partition, committed_offset, group, datetime.now(UTC).isoformat())
    location.publish(marker_path(location, stream, partition), orjson.dumps(asdict(marker)))
    return marker


class CommitMarkers:
    """A consumer's marker writer for one stream: an offset whose marker could not be written is kept and
    written with the next commit, so a store that refuses one write only delays the marker."""

    def __init__(self, location: Location, stream: str, group: str | None) -> None:
        self.location = location
        self.stream = stream
        self.group = group
        self._pending: dict[int, int] = {}

    def advance(self, committed: dict[int, int]) -> None:
        """Record offsets just committed (partition -> offset); logs instead of raising when the store fails."""
        for partition, offset in committed.items():
            self._pending[partition] = max(offset, self._pending.get(partition, offset))
        for partition, offset in sorted(self._pending.items()):
            try:
                advance_marker(self.location, self.stream, partition, offset, group=self.group)
            except OSError as exc:
                log.warning("commit marker of %s[%d] at %d not written yet: %s", self.stream, partition, offset, exc)
                continue
            del self._pending[partition]
