"""The producers' SQLite state: dedup keys bounded by count and age, progress, and leases on files."""

from __future__ import annotations

import time
from pathlib import Path

from producers.state import FileProgress, StateStore


def _keys(store: StateStore, kind: str, n: int, start: int = 0) -> None:
    assert store.claim("f", "me", ttl_s=60)
    for i in range(start, start + n):
        progress = FileProgress("f", 1, i, False, {0: i})
        assert store.checkpoint(progress, [(kind, f"{kind}-{i}".encode())], "me")
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
    assert store.claim("/data/a.warc.gz", "me", ttl_s=60) and store.claim("/data/b.warc.gz", "me", ttl_s=60)
    assert store.checkpoint(FileProgress("/data/a.warc.gz", 100, 40, False, {0: 3, 2: 9}), [], "me")
    assert store.checkpoint(FileProgress("/data/b.warc.gz", 10, 10, True, {}), [], "me")
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
    assert not two.renew("f", "two", ttl_s=0.5), "and no longer renewed by the one that lost it"
    one.release("f", "one")
    assert not two.renew("f", "two", ttl_s=0.5), "not even once the new holder released it"
    assert not one.renew("f", "one", ttl_s=0.5), "nor by its holder once released"
    assert two.claim("f", "two", ttl_s=0.5) and two.renew("f", "two", ttl_s=0.5)


def test_only_the_lease_holder_records_progress(tmp_path: Path) -> None:
    """A run that stalled past its lease and finds the file taken writes nothing, not even its dedup keys."""
    store = StateStore(tmp_path)
    assert store.claim("f", "stalled", ttl_s=0.1)
    time.sleep(0.2)
    assert store.claim("f", "new", ttl_s=60)
    assert store.checkpoint(FileProgress("f", 10, 10, True, {}), [], "new")
    assert not store.checkpoint(FileProgress("f", 10, 4, False, {0: 1}), [("url", b"u")], "stalled")
    assert store.progress("f") == FileProgress("f", 10, 10, True, {})
    assert not store.seen("url", b"u")
