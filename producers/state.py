"""The producers' memory across runs and processes: seen documents (exact dedup) and per-file progress.

One SQLite file in a state directory (WAL mode, so several producer processes on one machine can share it; each
write is a short transaction with a busy timeout). Dedup keys are remembered for `ttl_days` and at most
`max_keys` of each kind, oldest evicted first: memory stays bounded, at the price that a page seen longer ago than
that (or before a flood of newer pages) passes again. The consumers' own doc_id dedup is the second line behind it.

A key is written only once Kafka acknowledged its document, in the same transaction that moves the file's
progress on, so a crash can never mark a page seen that did not reach the topic.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    kind TEXT NOT NULL, key BLOB NOT NULL, seen_at REAL NOT NULL, PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (kind, seen_at);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, next_offset INTEGER NOT NULL, done INTEGER NOT NULL,
    scan_from TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (path TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL);
"""


@dataclass(slots=True)
class FileProgress:
    """How far a file got: every record before `next_offset` is in Kafka or was dropped with a reason.

    `scan_from` holds, per partition, an offset at or before this file's first unacknowledged message: where a
    resumed run looks for messages that were sent before a crash but never acknowledged to it.
    """

    path: str
    size: int
    next_offset: int
    done: bool
    scan_from: dict[int, int]


class StateStore:
    """The SQLite state of one state directory."""

    def __init__(self, directory: str | Path, max_keys: int = 50_000_000, ttl_days: float = 90.0) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / "producer-state.sqlite3"
        self.max_keys = max_keys
        self.ttl_seconds = ttl_days * 86400
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._inserted = 0

    def close(self) -> None:
        self._db.close()

    def seen(self, kind: str, key: bytes) -> bool:
        row = self._db.execute("SELECT 1 FROM seen WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return row is not None

    def progress(self, path: str) -> FileProgress | None:
        row = self._db.execute(
            "SELECT path, size, next_offset, done, scan_from FROM files WHERE path = ?", (path,)
        ).fetchone()
        if row is None:
            return None
        scan_from = {int(p): int(o) for p, o in orjson.loads(row[4]).items()}
        return FileProgress(row[0], row[1], row[2], bool(row[3]), scan_from)

    def claim(self, path: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the lease on a file; False while another live producer holds it.

        One producer per file at a time is what makes resuming safe: the resumed run must know that no one else
        is still sending that file's records. A holder renews at every checkpoint; a dead one's lease runs out.
        """
        now = time.time()
        with self._transaction():
            row = self._db.execute("SELECT owner, until FROM claims WHERE path = ?", (path,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO claims (path, owner, until) VALUES (?, ?, ?)", (path, owner, now + ttl_s)
            )
        return True

    def renew(self, path: str, owner: str, ttl_s: float) -> bool:
        """Extend a lease this owner holds; False once another producer took the file (even if it is done with it
        since): a run that lost its file must not take it back mid-file, with progress it never scanned for."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE claims SET until = ? WHERE path = ? AND owner = ?", (time.time() + ttl_s, path, owner)
            )
        return cursor.rowcount == 1

    def release(self, path: str, owner: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM claims WHERE path = ? AND owner = ?", (path, owner))

    def done_paths(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT path FROM files WHERE done = 1")}

    def checkpoint(self, progress: FileProgress, keys: Iterable[tuple[str, bytes]], holder: str) -> bool:
        """Atomically record committed dedup keys and the file's new progress, if `holder` still holds its lease.

        False (nothing written) once another producer took the file over: a run that stalled past its lease must
        not move progress under the run that now owns the file, however its last commit went.
        """
        now = time.time()
        rows = [(kind, key, now) for kind, key in keys]
        scan_from = orjson.dumps({str(p): o for p, o in progress.scan_from.items()}).decode()
        with self._transaction():
            row = self._db.execute("SELECT owner FROM claims WHERE path = ?", (progress.path,)).fetchone()
            if row is None or row[0] != holder:
                return False
            self._db.executemany("INSERT OR REPLACE INTO seen (kind, key, seen_at) VALUES (?, ?, ?)", rows)
            self._db.execute(
                "INSERT OR REPLACE INTO files (path, size, next_offset, done, scan_from, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (progress.path, progress.size, progress.next_offset, int(progress.done), scan_from, now),
            )
        self._inserted += len(rows)
        if self._inserted >= max(1000, self.max_keys // 100):
            self.evict()
        return True

    def evict(self) -> int:
        """Drop keys past their TTL and, per kind, the oldest beyond `max_keys`. Returns how many went."""
        self._inserted = 0
        removed = 0
        with self._transaction():
            cursor = self._db.execute("DELETE FROM seen WHERE seen_at < ?", (time.time() - self.ttl_seconds,))
            removed += cursor.rowcount
            for (kind,) in self._db.execute("SELECT DISTINCT kind FROM seen").fetchall():
                cursor = self._db.execute(
                    "DELETE FROM seen WHERE kind = ? AND seen_at <= (SELECT seen_at FROM seen WHERE kind = ?"
                    " ORDER BY seen_at DESC LIMIT 1 OFFSET ?)",
                    (kind, kind, self.max_keys),
                )
                removed += cursor.rowcount
        return removed

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
