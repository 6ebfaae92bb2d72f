"""Streaming near-duplicate removal: MinHash LSH over the request text, one index per branch, first seen wins.

A WR pair whose page was already used by an earlier WR pair is dropped too (the page is its response).
The index is insert-if-no-near-match; `add_existing` rebuilds it from rows already written, so a restarted
consumer keeps the decisions it made before. `DedupStage` is the index as the pipeline's stage after the
engine: it judges outcomes in source order, recalls committed rows and starts over when told to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import xxhash

from consumers.webr import quality
from core.outcomes import Outcome, PairRow, Rejection

if TYPE_CHECKING:  # datasketch pulls in scipy (a second of start-up): imported when the first pair is judged
    from datasketch import MinHash, MinHashLSH

STAGE = "dedup"
"""The stage a duplicate's rejection names: after the engine, in the pipeline."""


def shingles(text: str, n: int = 3) -> set[bytes]:
    """Lower-cased word n-grams; short texts fall back to their words. The words are the quality filters' own
    (cached): the request was split into them when it was inspected."""
    words = quality.words(text)
    if len(words) < n:
        return {w.encode() for w in words}
    return set(map(str.encode, map(" ".join, zip(*(words[i:] for i in range(n)), strict=False))))


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
    _empty: MinHash | None = None

    def _minhash(self, text: str) -> MinHash:
        if self._empty is None:
            from datasketch import MinHash

            # xxh32 instead of datasketch's default sha1: a 32-bit hash is all MinHash uses, and sha1 through
            # its Python wrapper cost more than the rest of the signature. The index holds no stored hashes
            # (a restart rebuilds it from the requests), so nothing written depends on the function.
            self._empty = MinHash(num_perm=self.settings.num_perm, hashfunc=xxhash.xxh32_intdigest)
        # Copies share the permutations drawn once: drawing them for every text cost more than hashing it.
        mh = self._empty.copy()
        mh.update_batch(list(shingles(text)))
        return mh

    def _index(self, branch: str) -> MinHashLSH:
        if branch not in self._lsh:
            from datasketch import MinHashLSH

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


class DedupStage:
    """The order-dependent dedup of one process's stream(s): the first of a near-duplicate group is kept.

    Implements the pipeline's `Dedup` stage. Decisions depend on order, so `admit` must see outcomes in source
    order; `recall` adds rows admitted before (read back from committed output); `reset` forgets everything,
    for when the index holds decisions about records that will be processed again.
    """

    def __init__(self, settings: DedupSettings | None = None) -> None:
        self.settings = settings if settings is not None else DedupSettings()
        self._index = DedupIndex(self.settings)

    def admit(self, outcome: Outcome) -> Outcome:
        """The outcome itself, or a `Rejection` at stage `dedup` (keeping the pair's usage) for a duplicate."""
        if not isinstance(outcome, PairRow):
            return outcome
        why = self._index.check_and_add(outcome.branch, outcome.request, outcome.page_hash)
        if why is None:
            return outcome
        return Rejection(
            doc_id=outcome.doc_id,
            stage=STAGE,
            reason=why,
            detail=outcome.request[:200],
            ref=outcome.ref,
            created_at=datetime.now(UTC),
            source_url=outcome.source_url,
            usage=outcome.usage,
        )

    def recall(self, branch: str, request: str, page_hash: str) -> None:
        self._index.add_existing(branch, request, page_hash)

    def reset(self) -> None:
        self._index = DedupIndex(self.settings)

    def __len__(self) -> int:
        return len(self._index)
