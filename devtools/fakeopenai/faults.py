"""Faults the fake server can answer with instead of a normal completion."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

REFUSAL_TEXT = "I'm sorry, but I can't help with that."


class FaultKind(StrEnum):
    RATE_LIMIT = "rate_limit"  # 429 with retry-after and x-ratelimit-* headers
    SERVER_ERROR = "server_error"  # 500/502/503 (status chosen by the fault)
    BAD_REQUEST = "bad_request"  # 400, a permanent error
    TIMEOUT = "timeout"  # hang longer than any sane client timeout
    REFUSAL = "refusal"  # 200 with a polite refusal as the content
    EMPTY = "empty"  # 200 with empty content
    GARBAGE = "garbage"  # 200, JSON content type, body that is not JSON
    LENGTH = "length"  # 200, truncated text, finish_reason "length"
    CONTENT_FILTER = "content_filter"  # 200, no content, finish_reason "content_filter"


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure. Build with the class methods; `status` and timings have sensible defaults."""

    kind: FaultKind
    status: int = 200
    retry_after_s: float = 1.0
    hang_s: float = 30.0

    @classmethod
    def rate_limit(cls, retry_after_s: float = 1.0) -> Fault:
        return cls(FaultKind.RATE_LIMIT, 429, retry_after_s=retry_after_s)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        if not 500 <= status <= 599:
            raise ValueError("a server error has a 5xx status")
        return cls(FaultKind.SERVER_ERROR, status)

    @classmethod
    def bad_request(cls, status: int = 400) -> Fault:
        return cls(FaultKind.BAD_REQUEST, status)

    @classmethod
    def timeout(cls, hang_s: float = 30.0) -> Fault:
        return cls(FaultKind.TIMEOUT, 200, hang_s=hang_s)

    @classmethod
    def refusal(cls) -> Fault:
        return cls(FaultKind.REFUSAL)

    @classmethod
    def empty(cls) -> Fault:
        return cls(FaultKind.EMPTY)

    @classmethod
    def garbage(cls) -> Fault:
        return cls(FaultKind.GARBAGE)

    @classmethod
    def length(cls) -> Fault:
        return cls(FaultKind.LENGTH)

    @classmethod
    def content_filter(cls) -> Fault:
        return cls(FaultKind.CONTENT_FILTER)

    @classmethod
    def of(cls, kind: FaultKind | str) -> Fault:
        """The default fault of a kind (used for random injection by kind)."""
        kind = FaultKind(kind)
        if kind is FaultKind.RATE_LIMIT:
            return cls.rate_limit()
        if kind is FaultKind.SERVER_ERROR:
            return cls.server_error()
        if kind is FaultKind.BAD_REQUEST:
            return cls.bad_request()
        return cls(kind)
