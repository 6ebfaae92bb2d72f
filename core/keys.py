"""The object-key scheme of the output, shared by the sink that writes it and every reader (recovery, trainer).

Rows land under `<root>/<stream>/[dt=YYYY-MM-DD/]<stream>+<partition>+<start offset>.parquet` and rejections
under `<root>/_rejected/<stream>/...` with the same names, as Kafka Connect's S3 sink names its objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pyarrow import fs as pafs

from core.storage import TMP_PREFIX, Location

REJECTED_DIR = "_rejected"


def file_name(stream: str, partition: int, start_offset: int) -> str:
    """`<stream>+<partition>+<start offset, zero padded>.parquet`, as Kafka Connect names its objects."""
    return f"{stream}+{partition}+{start_offset:020d}.parquet"


def parse_file_name(name: str) -> tuple[str, int, int] | None:
    """(stream, partition, start offset) of a name made by `file_name`, or None for any other file."""
    if not name.endswith(".parquet"):
        return None
    parts = name[: -len(".parquet")].rsplit("+", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file of a stream's output as found in storage."""

    path: str
    partition: int
    start_offset: int
    rejected: bool
    temporary: bool = False  # a `.tmp-` file of a local publish killed before its rename


def list_outputs(location: Location, stream: str, *, temporaries: bool = False) -> list[OutputFile]:
    """Every rows and rejections file of `stream`, across date directories (and its temporaries if asked)."""
    found: list[OutputFile] = []
    for base, rejected in ((location.path(stream), False), (location.path(REJECTED_DIR, stream), True)):
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        for info in location.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            temporary = info.base_name.startswith(TMP_PREFIX)
            if temporary and not temporaries:
                continue
            parsed = parse_file_name(info.base_name.split("-", 2)[-1] if temporary else info.base_name)
            if parsed is not None and parsed[0] == stream:
                found.append(OutputFile(info.path, parsed[1], parsed[2], rejected, temporary))
    return found


def date_dir(ts_ms: int | None) -> list[str]:
    """Record-time date partition (`dt=YYYY-MM-DD`); absent for sources without record time (files)."""
    if ts_ms is None:
        return []
    return [f"dt={datetime.fromtimestamp(ts_ms / 1000, tz=UTC):%Y-%m-%d}"]
