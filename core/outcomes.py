"""What processing one document ends as: exactly one `PairRow` or one `Rejection` (nothing lost)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a document came from: a file (partition 0, offset = record index) or a Kafka topic-partition."""

    source: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage and cost summed over a document's successful LLM calls; `attempts` counts every HTTP
    attempt, retries of bad output and timeouts included (a server may have answered, and billed, those)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = None
    attempts: int = 0

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None
            if self.cost_usd is None and other.cost_usd is None
            else ((self.cost_usd or 0.0) + (other.cost_usd or 0.0))
        )
        return Usage(
            self.calls + other.calls,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            cost,
            self.attempts + other.attempts,
        )


@dataclass(frozen=True, slots=True)
class PairRow:
    """One instruction-tuning pair in chat form, with the provenance the reference lacks."""

    doc_id: str
    prompt_id: str
    instruction: str
    response: str
    request: str
    branch: str
    category: str
    persona: str
    source_url: str | None
    model: str
    prompt_version: str
    seed: int
    page_tokens: int
    page_truncated: bool
    usage: Usage
    ref: SourceRef
    created_at: datetime
    metadata_json: str = "{}"
    page_hash: str = ""

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.instruction}, {"role": "assistant", "content": self.response}]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A document that yields no row, with the stage where it stopped and why.

    `doc_id` is None only for an input record too broken to carry one; `ref` still says where it was.
    `payload` is the original input record, byte for byte, so it can be replayed; the runtime that read the
    record attaches it (`with_payload`), since the engine only ever sees the parsed document.
    """

    doc_id: str | None
    stage: str
    reason: str
    detail: str
    ref: SourceRef
    created_at: datetime
    source_url: str | None = None
    payload: bytes | None = None
    usage: Usage = field(default_factory=Usage)

    def with_payload(self, payload: bytes | None) -> Rejection:
        return self if self.payload is not None else replace(self, payload=payload)


Outcome = PairRow | Rejection
