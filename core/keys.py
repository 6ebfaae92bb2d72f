"""The object-key scheme of the output, shared by the sink that writes it and every reader (recovery, trainer).

Rows land under `<root>/<stream>/[dt=YYYY-MM-DD/]<stream>+<partition>+<start>+<end>+g<generation>.parquet` and
rejections under `<root>/_rejected/<stream>/...` with the same names: Kafka Connect's S3 naming (stream,
partition, first offset), plus the exclusive end of the offset range and the generation of the consumer group
in which the writer owned the partition. The generation fences a writer that lost its partition without knowing (a
member cut off from the broker, a revocation whose commit was refused) and still publishes files: those
overlap the offset ranges of the partition's next owner, whose generation is higher, so every reader drops them
(`superseded`). A file run has one writer, `FILE_RUN_GENERATION`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby

from pyarrow import fs as pafs

from core.storage import TMP_PREFIX, Location

REJECTED_DIR = "_rejected"
FILE_RUN_GENERATION = 0
"""The generation in the names of a file run's files (its one writer)."""
LEGACY_GENERATION = -1
"""Names from before the range's end and the writer's generation were in them (`<stream>+<p>+<start>.parquet`):
never fenced, never fencing; the end of their range is in the file's `webr.end_offset` metadata."""


@dataclass(frozen=True, slots=True)
class FileKey:
    """What an output file's name says."""

    stream: str
    partition: int
    start_offset: int
    end_offset: int | None
    """Exclusive; None in a legacy name."""
    generation: int
    """Consumer-group generation in which the writer owned the partition (`FILE_RUN_GENERATION` for a file run)."""

    def overlaps(self, start: int, end: int) -> bool:
        return self.end_offset is not None and self.start_offset < end and start < self.end_offset


def file_name(stream: str, partition: int, start_offset: int, end_offset: int, generation: int) -> str:
    """`<stream>+<partition>+<start>+<end>+g<generation>.parquet`, offsets zero padded so names sort by offset."""
    return f"{stream}+{partition}+{start_offset:020d}+{end_offset:020d}+g{generation}.parquet"


def parse_file_name(name: str) -> FileKey | None:
    """The key of a name made by `file_name` (or a legacy one), None for any other file."""
    if not name.endswith(".parquet"):
        return None
    stem = name[: -len(".parquet")]
    parts = stem.rsplit("+", 4)
    if len(parts) == 5 and parts[4][:1] == "g" and _digits(parts[1], parts[2], parts[3], parts[4][1:]):
        return FileKey(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4][1:]))
    parts = stem.rsplit("+", 2)
    if len(parts) == 3 and _digits(parts[1], parts[2]):
        return FileKey(parts[0], int(parts[1]), int(parts[2]), None, LEGACY_GENERATION)
    return None


def _digits(*parts: str) -> bool:
    return all(p.isdigit() for p in parts)


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file of a stream's output as found in storage."""

    path: str
    key: FileKey
    rejected: bool
    temporary: bool = False  # a `.tmp-` file of a local publish killed before its rename


def list_outputs(location: Location, stream: str | None = None, *, temporaries: bool = False) -> list[OutputFile]:
    """Every rows and rejections file of `stream` (of every stream when None), across date directories, and
    their temporaries if asked."""
    bases = [location.root] if stream is None else [location.path(stream), location.path(REJECTED_DIR, stream)]
    infos = [
        info
        for base in bases
        for info in location.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    ]
    return outputs_in(location, infos, stream, temporaries=temporaries)


def outputs_in(
    location: Location, infos: Iterable[pafs.FileInfo], stream: str | None = None, *, temporaries: bool = False
) -> list[OutputFile]:
    """The output files of `stream` (of every stream when None) in a listing of `location` already made."""
    rejected_prefix = location.path(REJECTED_DIR) + "/"
    found: list[OutputFile] = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        temporary = info.base_name.startswith(TMP_PREFIX)
        if temporary and not temporaries:
            continue
        key = parse_file_name(info.base_name.split("-", 2)[-1] if temporary else info.base_name)
        if key is not None and (stream is None or key.stream == stream):
            found.append(OutputFile(info.path, key, info.path.startswith(rejected_prefix), temporary))
    return found


def superseded(files: Iterable[OutputFile]) -> list[OutputFile]:
    """The files whose offset range overlaps a file of a later generation of the same stream and partition.

    A partition's owner writes contiguous, non-overlapping ranges from its committed offset on, and a new owner
    starts where the last commit ended, so committed files never overlap. An overlap means one of the two was
    written by an owner of an earlier generation after it had lost the partition; the later generation's file
    is the one the commits went on from. Rows and rejections files count alike (a range may have only one).
    """
    by_partition: dict[tuple[str, int], list[OutputFile]] = defaultdict(list)
    for f in files:
        if not f.temporary and f.key.end_offset is not None:
            by_partition[(f.key.stream, f.key.partition)].append(f)
    out: list[OutputFile] = []
    for group in by_partition.values():
        group.sort(key=lambda f: -f.key.generation)
        later: list[tuple[int, int]] = []  # ranges of the generations seen so far, merged and sorted
        for _, same in groupby(group, key=lambda f: f.key.generation):
            same_generation = list(same)
            out += [f for f in same_generation if _overlaps_any(later, f.key)]
            later = _merge(later + [(f.key.start_offset, f.key.end_offset or 0) for f in same_generation])
    return out


def _overlaps_any(ranges: list[tuple[int, int]], key: FileKey) -> bool:
    """Whether `key`'s range overlaps one of `ranges` (disjoint, sorted): only the last one starting before
    its end can."""
    i = bisect_left(ranges, (key.end_offset or 0,))
    return i > 0 and key.overlaps(*ranges[i - 1])


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def date_dir(ts_ms: int | None) -> list[str]:
    """Record-time date partition (`dt=YYYY-MM-DD`); absent for sources without record time (files)."""
    if ts_ms is None:
        return []
    return [f"dt={datetime.fromtimestamp(ts_ms / 1000, tz=UTC):%Y-%m-%d}"]
