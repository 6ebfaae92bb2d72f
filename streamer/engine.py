"""What the pipeline drives, as it sees it: a per-document processor and the dedup stage after it.

`consumers.webr` provides both (`DocumentProcessor`, `DedupStage`); `streamer.consume.webr_engine` puts them
together with the LLM client. The pipeline (`streamer.pipeline`) owns the dedup stage: it calls `admit` in source
order and, when partitions are handed to it, `recall` and `reset`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from core.exceptions import InvalidRecord
from core.outcomes import Outcome, Rejection, SourceRef
from core.records import Document

if TYPE_CHECKING:
    from consumers.llm.client import ClientStats


class Processor(Protocol):
    """The engine as the pipeline uses it (`consumers.webr.processor.DocumentProcessor`)."""

    async def process(self, doc: Document, ref: SourceRef, *, seq: int) -> Outcome: ...

    def drain(self) -> None:
        """The source is exhausted (the end of a file run): finish what runs, the longest chains first."""
        ...

    def reject_invalid(self, error: InvalidRecord, ref: SourceRef, raw: bytes | None) -> Rejection: ...


class Dedup(Protocol):
    """The order-dependent stage after the engine (`consumers.webr.dedup.DedupStage`), owned by the pipeline."""

    def admit(self, outcome: Outcome) -> Outcome:
        """The outcome, or the rejection that replaces it; called once per outcome, in source order."""
        ...

    def recall(self, branch: str, request: str, page_hash: str) -> None:
        """Remember a row admitted before (read back from committed output)."""
        ...

    def reset(self) -> None:
        """Forget every decision."""
        ...


@dataclass(frozen=True, slots=True)
class Engine:
    """What the pipeline drives: the per-document processor and the dedup stage after it, plus the LLM
    client's counters for the metrics endpoint and the hook through which a Kafka member tells the client's rate
    limiter which partitions it owns of how many (`RateLimiter.set_share`); None where the client has neither."""

    processor: Processor
    dedup: Dedup
    llm_stats: ClientStats | None = None
    share_llm_limit: Callable[[Collection[int], int], None] | None = None
