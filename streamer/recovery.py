"""What a new owner of a partition does before it consumes: clear uncommitted output, recall dedup decisions.

Offsets are committed only at the end of a durable file, so every output file of a partition that starts at or
after the committed offset was written by an owner that died (or lost the partition) before it could commit. It
is about to be rewritten from the same records, possibly with other file boundaries (a shutdown flush rolls
early), so it is removed first: otherwise a replay rolling at a different offset would leave a row twice. Files
that an earlier owner published after losing the partition, over offsets a later owner has committed since,
are superseded (`core.keys.superseded`): readers skip them, and they go too.

The dedup index is in memory. Rebuilding it from the rows below the committed offset keeps the decisions made
before a restart; rows above it are not loaded, or a replayed document would be a near-duplicate of itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow.parquet as pq

from core.keys import list_outputs, superseded
from core.storage import Location

log = logging.getLogger(__name__)

DEDUP_COLUMNS = ["branch", "request", "page_hash", "source_partition", "source_offset"]


def clear_uncommitted(location: Location, stream: str, positions: dict[int, int], generation: int) -> list[str]:
    """Delete the files of each partition that start at or after its committed offset, and its superseded
    files; returns their paths. `generation` is the caller's: a file of a later one belongs to an owner that came
    after it (this member lost the partition while it was preparing it) and is left alone.

    On a local disk, temporary files of a write killed before its rename go too (S3 puts leave none).
    """
    found = [f for f in list_outputs(location, stream, temporaries=location.is_local) if f.key.partition in positions]
    stale = [
        f.path
        for f in found
        if f.key.generation <= generation and (f.temporary or f.key.start_offset >= positions[f.key.partition])
    ]
    for path in stale:
        log.info("removing uncommitted output %s", path, extra={"path": path})
    uncommitted = set(stale)
    fenced = [f.path for f in superseded(found) if f.path not in uncommitted]
    for path in fenced:
        log.warning("removing output written after its writer lost the partition: %s", path, extra={"path": path})
    for path in stale + fenced:
        location.fs.delete_file(path)
    return stale + fenced


def committed_rows(
    location: Location, stream: str, ranges: dict[int, tuple[int, int]]
) -> Iterator[tuple[str, str, str]]:
    """(branch, request, page_hash) of the rows of each partition whose offsets fall in its [start, end)."""
    import pyarrow.compute as pc  # only a restarted Kafka member reads rows back: not on every start-up path

    files = list_outputs(location, stream)
    fenced = {f.path for f in superseded(files)}
    for f in files:
        if f.rejected or f.key.partition not in ranges or f.path in fenced:
            continue
        start, end = ranges[f.key.partition]
        if f.key.start_offset >= end:
            continue
        table = pq.read_table(f.path, columns=DEDUP_COLUMNS, filesystem=location.fs)
        offsets = table.column("source_offset")
        keep = pc.and_(pc.greater_equal(offsets, start), pc.less(offsets, end))
        table = table.filter(keep)
        for branch, request, page_hash in zip(
            table.column("branch").to_pylist(),
            table.column("request").to_pylist(),
            table.column("page_hash").to_pylist(),
            strict=True,
        ):
            if request:
                yield branch, request, page_hash or ""


def dedup_ranges(indexed: dict[int, int], positions: dict[int, int]) -> tuple[bool, dict[int, tuple[int, int]]]:
    """Which committed rows the dedup index lacks for partitions starting at `positions`.

    `indexed[p]` is the offset below which partition p's admitted rows are in the index. If it is beyond the
    partition's committed position, the index holds decisions about records that will be processed again (a
    commit failed or membership was lost): the index must be rebuilt from scratch (`True`), or those records
    would be judged near-duplicates of themselves.
    """
    reset = any(indexed.get(p, 0) > position for p, position in positions.items())
    known = {} if reset else indexed
    return reset, {p: (known.get(p, 0), pos) for p, pos in positions.items() if known.get(p, 0) < pos}
