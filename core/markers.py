"""Commit markers: per stream and partition, the offset below which the output is committed and final.

A file of the output is published before the offsets it covers are committed, and a consumer that dies in
between leaves a file that the partition's next owner deletes and writes again, from new LLM calls. Readers
that must see each input once (the trainer) therefore take only the files that end at or below their
partition's marker, which the consumer moves forward after every successful offset commit (a file run: once,
at the end of a complete run), and that no later generation's file supersedes (`core.keys.superseded`: a writer
that had lost its partition published it). Nothing below a committed offset is ever rewritten, so a file taken
once never changes.

A marker is the highest of the keys `<output>/_markers/<stream>/<partition>/<committed offset>.json`. Each
commit adds its own key and removes the lower ones, so a marker never moves back, even when two owners race
across a rebalance or a write of an older offset reaches the store late (a lower key beside the highest does not
count). A marker may lag its commit (its write failed, or the process died right after committing): that holds
files back until the next commit or the partition's next assignment, never lets an uncommitted one through.
Earlier versions kept one object per partition, `<output>/_markers/<stream>/<partition>.json`: it is still read
(the highest of it and the keys counts), never written.
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


def marker_dir(location: Location, stream: str, partition: int) -> str:
    return location.path(MARKERS_DIR, stream, str(partition))


def marker_path(location: Location, stream: str, partition: int, committed_offset: int) -> str:
    """One key per committed offset: a write that arrives late (a retried or delayed PUT of an older offset)
    adds a lower key beside the highest instead of replacing it, so the marker cannot move back."""
    return f"{marker_dir(location, stream, partition)}/{committed_offset:020d}.json"


def _parse(data: bytes) -> Marker:
    raw = orjson.loads(data)
    return Marker(
        stream=str(raw["stream"]),
        partition=int(raw["partition"]),
        committed_offset=int(raw["committed_offset"]),
        group=raw.get("group"),
        updated_at=raw.get("updated_at"),
    )


def _keys(location: Location, base: str) -> dict[tuple[str, int], list[tuple[int, str]]]:
    """(offset, path) of the marker keys under `base` (a stream's partition or the whole markers tree), by
    (stream, partition); a legacy key's offset is read from it."""
    root = location.path(MARKERS_DIR) + "/"
    found: dict[tuple[str, int], list[tuple[int, str]]] = {}
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    for info in location.fs.get_file_info(selector):
        name = info.base_name
        if info.type != pafs.FileType.File or not name.endswith(".json") or not name[:-5].isdigit():
            continue
        parts = info.path.removeprefix(root).split("/")
        if len(parts) == 3 and parts[1].isdigit():
            found.setdefault((parts[0], int(parts[1])), []).append((int(name[:-5]), info.path))
        elif len(parts) == 2 and (data := location.read_bytes(info.path)) is not None:
            found.setdefault((parts[0], int(name[:-5])), []).append((_parse(data).committed_offset, info.path))
    return found


def _newest(location: Location, keys: list[tuple[int, str]]) -> Marker | None:
    for _, path in sorted(keys, reverse=True):  # the highest first; one removed meanwhile is passed over
        data = location.read_bytes(path)
        if data is not None:
            return _parse(data)
    return None


def read_marker(location: Location, stream: str, partition: int) -> Marker | None:
    """The marker of `stream`'s `partition` (None before its first commit)."""
    keys = _keys(location, marker_dir(location, stream, partition)).get((stream, partition), [])
    legacy = location.path(MARKERS_DIR, stream, f"{partition}.json")
    if (data := location.read_bytes(legacy)) is not None:
        keys.append((_parse(data).committed_offset, legacy))
    return _newest(location, keys)


def read_markers(location: Location) -> dict[tuple[str, int], Marker]:
    """Every marker under the location, by (stream, partition): one listing, then one read each."""
    found = {}
    for key, keys in _keys(location, location.path(MARKERS_DIR)).items():
        marker = _newest(location, keys)
        if marker is not None:
            found[key] = marker
    return found


def advance_marker(
    location: Location, stream: str, partition: int, committed_offset: int, *, group: str | None = None
) -> Marker:
    """Move the marker of `stream`'s `partition` forward to `committed_offset`; a lower offset leaves it as it
    is. Returns the marker now stored. The keys it supersedes are removed (best effort: a lower key left over
    never counts)."""
    older = _keys(location, marker_dir(location, stream, partition)).get((stream, partition), [])
    if older and max(older)[0] >= committed_offset:
        current = _newest(location, older)
        if current is not None and current.committed_offset >= committed_offset:
            return current
    marker = Marker(stream, partition, committed_offset, group, datetime.now(UTC).isoformat())
    location.publish(marker_path(location, stream, partition, committed_offset), orjson.dumps(asdict(marker)))
    for offset, path in older:
        if offset < committed_offset:
            try:
                location.fs.delete_file(path)
            except OSError as exc:  # removed meanwhile by a racing owner, or the store failed: harmless
                log.debug("older commit marker %s not removed: %s", path, exc)
    return marker


def withdraw_markers(location: Location, stream: str) -> list[str]:
    """Remove every marker of `stream` (all partitions, legacy keys included); returns the keys removed. A file
    run does so before it writes: its files are not final again until it completes and marks them anew."""
    keys = [path for found in _keys(location, location.path(MARKERS_DIR, stream)).values() for _, path in found]
    for path in keys:
        location.fs.delete_file(path)
    return keys


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
