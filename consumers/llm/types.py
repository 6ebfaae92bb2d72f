"""The LLM client's contract: what a call returns, how it fails, and the protocol the engine depends on."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from core.exceptions import PipelineError

Message = dict[str, str]
T = TypeVar("T")

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds of the client's latency histogram (seconds); the last bucket, +Inf, is implied."""


class ErrorKind(StrEnum):
    """Error classes decided from status codes and response fields, never from message strings."""

    RATE_LIMITED = "rate_limited"  # 429
    TRANSIENT = "transient"  # 408, 409, 5xx, timeouts, refused or reset connections
    PERMANENT = "permanent"  # other 4xx (bad request, auth, context too long)
    BAD_OUTPUT = "bad_output"  # finish_reason length/content_filter, empty or unparsable body


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One successful chat completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: str
    latency_s: float
    attempts: int


@dataclass(order=True, slots=True)
class QueuedCall(Generic[T]):
    """A call waiting for capacity (a replica's slot, a rate-limit reservation); the lowest `rank` goes first.

    The rank is the caller's `priority`, then arrival. Once the run is draining (a finite source is exhausted)
    it is the calls the call's chain has left, most first, then the same: the documents with the longest chains
    go first, so the last ones do not run their calls one after another while the server idles. Calls that
    already wait are ranked again when draining starts (`drain()`); a queue that sorted them first under their
    priority alone would otherwise start the newest documents, with the most calls left, last."""

    priority: int = field(compare=False)
    calls_left: int = field(compare=False)
    seq: int = field(compare=False)
    future: asyncio.Future[T] = field(compare=False)
    rank: tuple[int, int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.rank = (0, self.priority, self.seq)

    def drain(self) -> None:
        self.rank = (-self.calls_left, self.priority, self.seq)


def drain_queue(waiters: list[QueuedCall[T]]) -> None:
    """Rank every waiting call for draining, in place; the list ends sorted (so also a valid heap)."""
    for waiter in waiters:
        waiter.drain()
    waiters.sort()


class LLMCallError(PipelineError):
    """A call that failed for good (after retries where the error was retryable)."""

    def __init__(self, kind: ErrorKind, reason: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.status = status
        self.attempts = attempts


class ChatClient(Protocol):
    """What the WebR engine needs from an LLM backend.

    `priority`: lower runs first when calls queue for capacity; the engine passes the document's sequence
    number so a started document's next call (same page prefix, warm in the server's cache) overtakes the
    first call of a newer document. `calls_left`: the calls of the caller's chain not answered yet, this one
    included; after `drain()` (no more documents will come) they decide first (`QueuedCall`).
    `step` names the step of the chain (persona, request...), whose replies have their own typical length: the
    client sizes `max_tokens` and its rate-limit reservation per step.
    `prompt_tokens`, when given, is the caller's estimate of the prompt for the rate limiter (the engine counts
    a page once per document); without it the client counts the messages.
    `seed`, when given, is sent as the request's sampling seed (vLLM samples it with a generator of its own,
    whatever else is in the batch), so a rerun writes the same text; a retry after bad output adds its count
    to it, so the retry samples differently.
    `affinity` (the document id) keeps a document's calls on one replica, whose prefix cache holds its page.
    """

    model: str

    async def chat(
        self,
        messages: list[Message],
        *,
        priority: int = 0,
        step: str = "default",
        prompt_tokens: int | None = None,
        seed: int | None = None,
        affinity: str | None = None,
        calls_left: int = 1,
    ) -> ChatResult: ...

    def drain(self) -> None:
        """The source is exhausted: from now on, and for calls already waiting, the longest chains go first."""
        ...

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float | None: ...
