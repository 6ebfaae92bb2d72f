"""The frozen training set of a run: valid rows of the manifest's files, written once to a local Parquet file.

Every rank of a multi-GPU run and every resumed attempt reads this same file, so what a model was trained on
never depends on what the data root holds later. Malformed `messages` rows are skipped with a reason code,
counted, and reported in the logs and the run's metadata.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from core.schema import MESSAGE
from core.storage import Location
from trainer.exceptions import DataError, DataFileError
from trainer.snapshot import BadFile, FileEntry, SnapshotDiff, check_messages_column

log = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant"})
TRAIN_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("doc_id", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
    ]
)
_OPTIONAL_COLUMNS = ("doc_id", "prompt_id")
_EXAMPLES_KEPT = 20


def message_problem(messages: object) -> str | None:
    """Why a `messages` value cannot be trained on (a short stable code), or None when it can."""
    if messages is None:
        return "messages_null"
    if not isinstance(messages, list) or not messages:
        return "messages_empty"
    roles: list[str] = []
    for turn in messages:
        if not isinstance(turn, dict):
            return "turn_not_a_struct"
        if turn.get("role") not in ROLES:
            return "unknown_role"
        content = turn.get("content")
        if not isinstance(content, str) or not content.strip():
            return "empty_content"
        roles.append(turn["role"])
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        return "system_turn_not_first"
    if not body or body[0] != "user":
        return "first_turn_not_user"
    if body[-1] != "assistant":
        return "last_turn_not_assistant"
    if any(a == b for a, b in pairwise(body)):
        return "turns_not_alternating"
    return None


@dataclass(slots=True)
class SkipReport:
    """Rows left out and why: counts per reason plus the first few (file, row) examples for the logs."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, object]] = field(default_factory=list)

    def add(self, path: str, row: int, reason: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < _EXAMPLES_KEPT:
            self.examples.append({"file": path, "row": row, "reason": reason})

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """What was written to the run's train.parquet, with its hash and the skip report."""

    path: str
    rows: int
    rows_from_new_files: int
    rows_from_old_files: int
    data_sha256: str
    skipped: dict[str, int]
    skipped_examples: list[dict[str, object]]
    bad_files: list[dict[str, str]]
    heldout_rows: int = 0  # moved out by trainer.holdout for the evaluation gate


class _Writer:
    """Streams valid rows into train.parquet (temp name, renamed when complete) and hashes them in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.writer = pq.ParquetWriter(self.tmp, TRAIN_SCHEMA)
        self.digest = hashlib.sha256()
        self.rows = 0

    def write(self, entry: FileEntry, table: pa.Table, indices: list[int], skips: SkipReport) -> int:
        messages = table.column("messages").to_pylist()
        cols = {c: table.column(c).to_pylist() for c in _OPTIONAL_COLUMNS if c in table.column_names}
        keep: list[int] = []
        for i in indices:
            reason = message_problem(messages[i])
            if reason is None:
                keep.append(i)
            else:
                skips.add(entry.path, i, reason)
        batch = {
            "source_file": [entry.path] * len(keep),
            "source_row": keep,
            **{c: [cols[c][i] if c in cols else None for i in keep] for c in _OPTIONAL_COLUMNS},
            "messages": [[{"role": t["role"], "content": t["content"]} for t in messages[i]] for i in keep],
        }
        for msgs in batch["messages"]:
            self.digest.update(orjson.dumps(msgs) + b"\n")
        if keep:
            self.writer.write_table(pa.table(batch, schema=TRAIN_SCHEMA))
        self.rows += len(keep)
        return len(keep)

    def close(self, *, commit: bool) -> None:
        self.writer.close()
        if commit:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def build_training_set(
    loc: Location,
    files: SnapshotDiff,
    out_path: Path,
    *,
    replay_sample: bool,
    replay_ratio: float,
    seed: str,
    skip_bad_files: bool = False,
) -> TrainingSet:
    """All rows of the new files, then all rows of the old ones, or a seeded sample of them (`replay_sample`)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer, skips, bad = _Writer(out_path), SkipReport(), []
    committed = False
    try:
        from_new = sum(_copy(loc, e, None, writer, skips, bad, skip_bad_files) for e in files.new)
        picks: dict[str, list[int] | None]
        if replay_sample:
            picks = dict(_replay_picks(files.old, round(replay_ratio * from_new), seed))
        else:
            picks = {e.path: None for e in files.old}
        old = [e for e in files.old if e.path in picks]
        from_old = sum(_copy(loc, e, picks[e.path], writer, skips, bad, skip_bad_files) for e in old)
        committed = writer.rows > 0
    finally:
        writer.close(commit=committed)
    _log_skips(skips)
    if writer.rows == 0:
        raise DataError(f"no valid row to train on: {skips.total} rows skipped ({dict(skips.counts)})")
    return TrainingSet(
        path=str(out_path),
        rows=writer.rows,
        rows_from_new_files=from_new,
        rows_from_old_files=from_old,
        data_sha256=writer.digest.hexdigest(),
        skipped=dict(skips.counts),
        skipped_examples=skips.examples,
        bad_files=[{"path": b.path, "reason": b.reason} for b in bad],
    )


def _copy(
    loc: Location,
    entry: FileEntry,
    indices: list[int] | None,
    writer: _Writer,
    skips: SkipReport,
    bad: list[BadFile],
    skip_bad_files: bool,
) -> int:
    try:
        table = _read(loc, entry)
    except DataFileError as exc:
        if not skip_bad_files:
            raise
        log.warning("skipping %s", exc)
        bad.append(BadFile(entry.path, exc.reason))
        return 0
    return writer.write(entry, table, list(range(table.num_rows)) if indices is None else indices, skips)


def _read(loc: Location, entry: FileEntry) -> pa.Table:
    path = loc.path(entry.path)
    try:
        with loc.fs.open_input_file(path) as handle:
            pf = pq.ParquetFile(handle)
            schema = pf.schema_arrow
            check_messages_column(schema, entry.path)
            columns = [c for c in ("messages", *_OPTIONAL_COLUMNS) if c in schema.names]
            table = pf.read(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise DataFileError(entry.path, f"unreadable Parquet ({exc})") from exc
    if table.num_rows != entry.rows:
        raise DataFileError(entry.path, f"holds {table.num_rows} rows, the manifest says {entry.rows}")
    return table


def _replay_picks(old: tuple[FileEntry, ...], count: int, seed: str) -> dict[str, list[int]]:
    """A uniform sample of `count` old rows, seeded by the snapshot so a resumed run picks the same rows."""
    total = sum(e.rows for e in old)
    chosen = sorted(random.Random(seed).sample(range(total), min(count, total)))
    picks: dict[str, list[int]] = {}
    start, it = 0, iter(chosen)
    nxt = next(it, None)
    for entry in old:
        end = start + entry.rows
        while nxt is not None and nxt < end:
            picks.setdefault(entry.path, []).append(nxt - start)
            nxt = next(it, None)
        start = end
    return picks


def _log_skips(skips: SkipReport) -> None:
    if skips.total:
        log.warning("skipped %d malformed rows: %s", skips.total, dict(skips.counts))
        for example in skips.examples[:5]:
            log.warning("  e.g. %s row %s: %s", example["file"], example["row"], example["reason"])
