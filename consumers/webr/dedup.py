"""Streaming near-duplicate removal: MinHash LSH over the request text, one index per branch, first seen wins.

A WR pair whose page was already used by an earlier WR pair is dropped too (the page is its response).
The index is insert-if-no-near-match; `add_existing` rebuilds it from rows already written, so a restarted
consumer keeps the decisions it made before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, n: int = 3) -> set[bytes]:
    """Lower-cased word n-grams; short texts fall back to their words."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {w.encode() for w in words}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


@dataclass(frozen=True, slots=True)
class DedupSettings:
    threshold: float = 0.7
    num_perm: int = 128


@dataclass
class DedupIndex:
    """One LSH index per branch plus the set of pages already used as WR responses."""

    settings: DedupSettings = field(default_factory=DedupSettings)
    _lsh: dict[str, MinHashLSH] = field(default_factory=dict)
    _wr_pages: set[str] = field(default_factory=set)
    _count: int = 0

    def _minhash(self, text: str) -> MinHash:
        mh = MinHash(num_perm=self.settings.num_perm)
        mh.update_batch(list(shingles(text)))
        return mh

    def _index(self, branch: str) -> MinHashLSH:
        if branch not in self._lsh:
            self._lsh[branch] = MinHashLSH(threshold=self.settings.threshold, num_perm=self.settings.num_perm)
        return self._lsh[branch]

    def check_and_add(self, branch: str, request: str, page_hash: str) -> str | None:
        """Admit the pair (returns None) or say why it is a duplicate; admitted pairs join the index."""
        if branch == "WR" and page_hash in self._wr_pages:
            return "duplicate_page"
        mh = self._minhash(request)
        index = self._index(branch)
        if index.query(mh):
            return "near_duplicate_request"
        self._insert(branch, mh, page_hash)
        return None

    def add_existing(self, branch: str, request: str, page_hash: str) -> None:
        """Record a pair admitted earlier (e.g. read back from the output after a restart)."""
        self._insert(branch, self._minhash(request), page_hash)

    def _insert(self, branch: str, mh: MinHash, page_hash: str) -> None:
        self._index(branch).insert(f"{branch}:{self._count}", mh)
        self._count += 1
        if branch == "WR":
            self._wr_pages.add(page_hash)

    def __len__(self) -> int:
        return self._count
