"""The producers' SQLite state: dedup keys bounded by count and age, progress, and leases on files."""

from __future__ import annotations

import time
from pathlib import Path

from producers.state import FileProgress, StateStore


def _keys(store: StateStore, kind: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        progress = FileProgress("f", 1, i, False, {0: i})
        store.checkpoint(progress, [(kind, f"{kind}-{i}".encode())])
        time.sleep(0.001)  # distinct seen_at, so "oldest" is well defined


def test_keys_survive_a_restart_and_the_oldest_go_beyond_the_bound(tmp_path: Path) -> None:
    store = StateStore(tmp_path, max_keys=5)
    _keys(store, "text", 8)
    _keys(store, "url", 2)
    store.close()

    store = StateStore(tmp_path, max_keys=5)
    assert store.seen("text", b"text-7") and store.seen("url", b"url-0")
    assert store.evict() == 3
    assert [store.seen("text", f"text-{i}".encode()) for i in range(8)] == [False] * 3 + [True] * 5
    assert store.seen("url", b"url-1"), "the bound is per kind"
    assert store.progress("f") == FileProgress("f", 1, 1, False, {0: 1}), "the last checkpoint is kept"
    store.close()


def test_keys_past_their_ttl_are_forgotten(tmp_path: Path) -> None:
    store = StateStore(tmp_path, ttl_days=1 / 86400)  # one second
    _keys(store, "text", 2)
    time.sleep(1.1)
    _keys(store, "text", 1, start=2)
    assert store.evict() == 2
    assert not store.seen("text", b"text-0") and store.seen("text", b"text-2")


def test_progress_round_trips(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.progress("/data/a.warc.gz") is None
    store.checkpoint(FileProgress("/data/a.warc.gz", 100, 40, False, {0: 3, 2: 9}), [])
    store.checkpoint(FileProgress("/data/b.warc.gz", 10, 10, True, {}), [])
    assert store.progress("/data/a.warc.gz") == FileProgress("/data/a.warc.gz", 100, 40, False, {0: 3, 2: 9})
    assert store.done_paths() == {"/data/b.warc.gz"}


def test_a_lease_is_exclusive_until_released_or_lapsed(tmp_path: Path) -> None:
    one, two = StateStore(tmp_path), StateStore(tmp_path)
    assert one.claim("f", "one", ttl_s=0.5)
    assert not two.claim("f", "two", ttl_s=0.5)
    assert one.claim("f", "one", ttl_s=0.5), "the holder renews"
    one.release("f", "one")
    assert two.claim("f", "two", ttl_s=0.5)
    time.sleep(0.6)
    assert one.claim("f", "one", ttl_s=0.5), "a lapsed lease is taken over"
