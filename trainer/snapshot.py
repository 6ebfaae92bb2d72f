"""A snapshot of the dataset: the set of committed Parquet files at one moment, frozen as a manifest.

Writers publish a file under its final name only once it is complete (`Location.publish`), so a listing that
ignores names starting with `.` or `_` (temporary files, markers, the `_rejected/` subtree) sees only complete
files. Complete is not final: a consumer's file (`core.keys`) is rewritten, from new LLM calls, when the
consumer died before committing its offsets. So a stream's file is taken only when its offset range ends at or
below its partition's commit marker (`core.markers`), and never when it is superseded (published by a writer
that had lost its partition, over offsets a later owner wrote and committed); the markers used are recorded in
the manifest. Parquet files not named like a stream's are taken as they are.

Each file is identified by its content hash, so a file rewritten under the same key counts as new; the hash
of an unchanged file (same path, size and mtime) is reused from the previous manifest.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from core.keys import FileKey, outputs_in, superseded
from core.markers import Marker, read_markers
from core.storage import Location
from trainer.exceptions import DataFileError, EmptySnapshot

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_END_OFFSET = b"webr.end_offset"
"""The sink's file metadata: the exclusive end of the offset range the file covers."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One complete data file: path relative to the data root, size, rows, content hash, and for a stream's
    file the end of its offset range."""

    path: str
    size: int
    rows: int
    sha256: str
    mtime_ns: int | None = None
    end_offset: int | None = None

    @property
    def identity(self) -> tuple[str, str]:
        return (self.path, self.sha256)


@dataclass(frozen=True, slots=True)
class BadFile:
    """A data file left out of the snapshot (only with --skip-bad-files), with pyarrow's reason."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """The frozen set of files a run trains on; `snapshot_id` hashes paths, sizes, rows and content hashes.
    `markers` are the commit markers the files were checked against; `held_back` the stream files they left
    out (published, not committed yet); `superseded` the stream files no snapshot takes (`core.keys`)."""

    root: str
    files: tuple[FileEntry, ...]
    markers: tuple[Marker, ...] = ()
    held_back: tuple[str, ...] = ()
    superseded: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def snapshot_id(self) -> str:
        canonical = [(f.path, f.size, f.rows, f.sha256) for f in sorted(self.files, key=lambda f: f.path)]
        return hashlib.sha256(orjson.dumps(canonical)).hexdigest()

    def to_dict(self) -> dict[str, object]:
        return {
            "root": self.root,
            "snapshot_id": self.snapshot_id,
            "rows": self.rows,
            "files": [asdict(f) for f in self.files],
            "markers": [asdict(m) for m in self.markers],
            "held_back": list(self.held_back),
            "superseded": list(self.superseded),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Manifest:
        files = tuple(FileEntry(**f) for f in data["files"])  # type: ignore[arg-type,union-attr]
        markers = tuple(Marker(**m) for m in data.get("markers", ()))  # type: ignore[arg-type,attr-defined]
        held = tuple(data.get("held_back", ()))  # type: ignore[arg-type]
        fenced = tuple(data.get("superseded", ()))  # type: ignore[arg-type]
        return cls(root=str(data["root"]), files=files, markers=markers, held_back=held, superseded=fenced)


@dataclass(frozen=True, slots=True)
class SnapshotDiff:
    """How a snapshot relates to the last trained one: files new (or rewritten) since, and files already seen."""

    new: tuple[FileEntry, ...]
    old: tuple[FileEntry, ...]

    @property
    def new_rows(self) -> int:
        return sum(f.rows for f in self.new)

    @property
    def old_rows(self) -> int:
        return sum(f.rows for f in self.old)


def is_data_file(relative: str) -> bool:
    """A complete data file: `*.parquet`, no path part starting with `.` or `_` (temp files, `_rejected/`)."""
    parts = relative.split("/")
    return parts[-1].endswith(".parquet") and not any(p.startswith((".", "_")) for p in parts)


def list_files(loc: Location) -> list[pafs.FileInfo]:
    """Every file under the root, in one listing; a missing root is an empty listing."""
    selector = pafs.FileSelector(loc.root, recursive=True, allow_not_found=True)
    return [i for i in loc.fs.get_file_info(selector) if i.type == pafs.FileType.File]


def data_files(loc: Location, infos: list[pafs.FileInfo]) -> list[pafs.FileInfo]:
    """The complete data files of a listing of the root, sorted by path."""
    return sorted((i for i in infos if is_data_file(_relative(loc, i.path))), key=lambda i: i.path)


def take_snapshot(
    loc: Location, previous: Manifest | None = None, *, skip_bad_files: bool = False
) -> tuple[Manifest, list[BadFile]]:
    """List, check against the commit markers, hash and count the complete files; a corrupt file fails the
    snapshot unless `skip_bad_files`."""
    markers = read_markers(loc)
    infos = list_files(loc)
    outputs = outputs_in(loc, infos)  # the streams' files, rows and rejections: both decide what is superseded
    streams = {f.path: f.key for f in outputs if not f.rejected}
    fenced = {_relative(loc, f.path) for f in superseded(outputs) if not f.rejected}
    known = {f.path: f for f in previous.files} if previous else {}
    entries: list[FileEntry] = []
    held: list[str] = []
    bad: list[BadFile] = []
    for info in data_files(loc, infos):
        rel = _relative(loc, info.path)
        if rel in fenced:
            continue
        stream = streams.get(info.path)
        seen = known.get(rel)
        if seen is not None and (
            (seen.size, seen.mtime_ns) != (info.size, info.mtime_ns) or (stream and seen.end_offset is None)
        ):
            seen = None  # changed since, or hashed before its offset range was recorded
        try:
            rows, end_offset = (seen.rows, seen.end_offset) if seen is not None else _footer(loc.fs, info, rel)
            if not _committed(stream, end_offset, markers):
                held.append(rel)
                continue
            sha256 = seen.sha256 if seen is not None else _sha256(loc.fs, info, rel)
        except DataFileError as exc:
            if not skip_bad_files:
                raise
            log.warning("skipping %s", exc)
            bad.append(BadFile(rel, exc.reason))
            continue
        entries.append(FileEntry(rel, int(info.size or 0), rows, sha256, info.mtime_ns, end_offset))
    if held:
        log.info("%d published files not committed yet, left for a later snapshot: %s", len(held), ", ".join(held))
    if fenced:
        log.warning(
            "%d files published after their writer lost its partition, left out: %s",
            len(fenced),
            ", ".join(sorted(fenced)),
        )
    used = tuple(markers[k] for k in sorted(markers))
    manifest = Manifest(loc.uri, tuple(entries), used, tuple(held), tuple(sorted(fenced)))
    if not manifest.files:
        raise EmptySnapshot(
            f"empty snapshot: no complete Parquet file under {loc.uri} (ignoring _* and .* names"
            f"{f'; {len(held)} published files not committed yet' if held else ''})"
        )
    if manifest.rows == 0:
        raise EmptySnapshot(f"empty snapshot: {len(manifest.files)} Parquet files under {loc.uri} hold no row")
    return manifest, bad


def _committed(stream: FileKey | None, end_offset: int | None, markers: dict[tuple[str, int], Marker]) -> bool:
    """A stream's file is final once its partition's marker covers its whole range; other files are as placed."""
    if stream is None:
        return True
    marker = markers.get((stream.stream, stream.partition))
    return marker is not None and end_offset is not None and marker.covers(end_offset)


def diff(current: Manifest, previous: Manifest | None) -> SnapshotDiff:
    """Split the current files into new (unseen content) and old (trained on before)."""
    seen = {f.identity for f in previous.files} if previous else set()
    return SnapshotDiff(
        new=tuple(f for f in current.files if f.identity not in seen),
        old=tuple(f for f in current.files if f.identity in seen),
    )


def check_messages_column(schema: pa.Schema, path: str) -> None:
    """The file must carry `messages: list<struct<role: string, content: string>>` (PAIRS_SCHEMA's column)."""
    index = schema.get_field_index("messages")
    if index < 0:
        raise DataFileError(path, "no `messages` column")
    typ = schema.field(index).type
    item = typ.value_type if pa.types.is_list(typ) or pa.types.is_large_list(typ) else None
    names = {item.field(i).name for i in range(item.num_fields)} if pa.types.is_struct(item) else set()
    if not {"role", "content"} <= names:
        raise DataFileError(path, f"`messages` is {typ}, expected list<struct<role, content>>")


def _footer(fs: pafs.FileSystem, info: pafs.FileInfo, rel: str) -> tuple[int, int | None]:
    """(rows, end of the offset range or None) from the footer, after checking the `messages` column."""
    try:
        with fs.open_input_file(info.path) as handle:
            meta = pq.ParquetFile(handle).metadata
            schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        raise DataFileError(rel, f"unreadable Parquet ({exc})") from exc
    check_messages_column(schema, rel)
    end = (schema.metadata or {}).get(_END_OFFSET)
    return int(meta.num_rows), int(end) if end is not None and end.isdigit() else None


def _sha256(fs: pafs.FileSystem, info: pafs.FileInfo, rel: str) -> str:
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(info.path) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise DataFileError(rel, f"unreadable Parquet ({exc})") from exc
    return digest.hexdigest()


def _relative(loc: Location, path: str) -> str:
    root = loc.root.rstrip("/")
    return path[len(root) + 1 :] if root and path.startswith(root + "/") else path.lstrip("/")
