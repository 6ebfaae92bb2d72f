"""Chat completions against OpenAI or any OpenAI-compatible server (vLLM), with our own retries and limits.

No SDK on the hot path: one HTTP exchange is `transport.post_chat` (aiohttp, orjson), and what went wrong is
decided in `errors.py` from statuses, headers and body fields. Retries are ours (tenacity): one attempt is a lease
on a replica from the `ReplicaPool` (priority-ordered, with the document's affinity; replicas out of rotation get
none), then, within that lease, a rate-limit reservation (its wait, a 429's cooldown included, holds the lease)
and one HTTP request to that replica; the backoff sleep between attempts holds neither, and every attempt shows in
the stats.

Transient is never final: a 429, a 5xx, a timeout or a refused connection is retried for as long as it takes
(or until `give_up_after_s`, when the user asked for a deadline), so a document keeps the calls it has completed
and resumes at the one that failed. Only a permanent cause (another 4xx, output still bad after a retry) fails.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never

from consumers.llm.budgets import StepBudgets
from consumers.llm.errors import (
    AttemptFailed,
    Completion,
    Failure,
    classify_exception,
    classify_reply,
    parse_completion,
)
from consumers.llm.feedback import LimitFeedback
from consumers.llm.pricing import prices_for
from consumers.llm.ratelimit import RateLimiter
from consumers.llm.replicas import POOL_CONNECTIONS, PoolStats, Replica, ReplicaPool
from consumers.llm.settings import LLMSettings
from consumers.llm.tokens import count_tokens, messages_tokens, prompt_estimate
from consumers.llm.transport import chat_url, encode, env_proxy, open_session, post_chat
from consumers.llm.types import LATENCY_BUCKETS_S, ChatResult, ErrorKind, LLMCallError, Message

log = logging.getLogger("consumers.llm")

# A bad output (truncated, empty, unparsable) is retried once: sampling may do better, twice rarely does.
_BAD_OUTPUT_RETRIES = 1
# Backoff between attempts of one call never exceeds this; while every replica is out the pool holds calls.
_MAX_BACKOFF_EXPONENT = 16
# Step sizes are still learnt (for reservations) where no max_tokens is sent; nothing caps them then.
_NO_CEILING = 1 << 30


@dataclass
class ClientStats:
    """Plain counters, read by the progress bar and the metrics exporter; only the client writes them."""

    calls_ok: int = 0
    calls_failed: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited_429: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_s_sum: float = 0.0  # of successful requests (the HTTP round trip, not the queueing)
    latency_count: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    in_flight: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    rate_scale: float = 1.0  # the share of the rate limits in use (adapted from the server's answers)
    pool: PoolStats = field(default_factory=PoolStats)  # per replica: in flight, limit, circuit breaker (its own)


@dataclass
class _CallState:
    step: str
    max_tokens: int | None  # sent with the request when set
    seed: int | None  # sent with the request when set, plus the bad outputs so far
    affinity: str | None
    priority: int  # in the queues for a replica and for the rate limits (`types.QueuedCall`)
    calls_left: int
    deadline: float | None = None  # loop time: give_up_after_s from the first failure (while no replica is up)
    attempts: int = 0
    bad_outputs: int = 0
    replica: Replica | None = None  # of the last attempt


def _ejected(state: _CallState) -> bool:
    """Whether the replica of the call's last attempt is out of rotation now."""
    return state.replica is not None and state.replica.breaker.is_open


class OpenAIChatClient:
    """`ChatClient` for OpenAI-compatible endpoints. Use `async with client:` (or `start()` / `aclose()`).

    The client owns its `RateLimiter` and the one `LimitFeedback` that adapts it: two clients adapting one
    limiter would each cut and grow its scale per window, breaking AIMD.
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 10.0,
        initial_completion_estimate: int = 300,
    ) -> None:
        self.settings = settings
        self.model: str = settings.model
        self.stats = ClientStats()
        self.limiter = RateLimiter(
            settings.max_requests_per_minute, settings.max_tokens_per_minute, headroom=settings.rate_limit_share
        )
        self.pool = ReplicaPool(settings)
        self.stats.pool = self.pool.stats
        self._feedback = LimitFeedback(self.limiter)
        self._prices = prices_for(settings)
        self._sampling = settings.sampling.model_dump(exclude_none=True, exclude={"max_tokens"})
        # OpenAI's reference sends no max_tokens; elsewhere each step sends its own within the configured cap.
        self._send_max_tokens = settings.sampling.max_tokens is not None
        self._steps = StepBudgets(settings.sampling.max_tokens or _NO_CEILING)
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._initial_completion_estimate = initial_completion_estimate
        self._sessions: dict[str, tuple[aiohttp.ClientSession, str]] = {}  # replica URL -> (session, chat URL)

    def __repr__(self) -> str:
        return f"OpenAIChatClient(model={self.model!r}, base_urls={self.settings.base_urls!r})"

    async def start(self) -> None:
        if self._sessions:
            return
        # A session per replica: each has its own keep-alive pool and its own proxy (or none) from the environment,
        # for the calls and for the pool's health checks and /metrics polls alike.
        self._sessions = {
            url: (
                open_session(
                    self.settings.api_key.get_secret_value(),
                    max_connections=self.settings.max_concurrency + POOL_CONNECTIONS,
                    timeout_s=self.settings.request_timeout_s,
                    proxy=env_proxy(url),
                ),
                chat_url(url),
            )
            for url in self.settings.base_urls
        }
        await self.pool.start({url: session for url, (session, _) in self._sessions.items()})

    async def aclose(self) -> None:
        sessions, self._sessions = self._sessions, {}
        await self.pool.aclose()
        for session, _ in sessions.values():
            await session.close()

    async def __aenter__(self) -> OpenAIChatClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float | None:
        if self._prices is None:
            return None
        return self._prices.cost(prompt_tokens, completion_tokens, cached_tokens)

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
    ) -> ChatResult:
        """One chat completion for `step` of a chain; raises LLMCallError when it fails for good.

        `prompt_tokens`: the caller's estimate of the prompt (see `tokens.prompt_estimate`), when it has one
        cheaper than counting the messages again."""
        if not self._sessions:
            raise RuntimeError("the client is not started: use `async with client:` or `await client.start()`")
        max_tokens = self._steps.max_tokens(step) if self._send_max_tokens else None
        state = _CallState(step, max_tokens, seed, affinity, priority, calls_left)
        estimate = prompt_tokens if prompt_tokens is not None else prompt_estimate(messages)
        try:
            try:
                result = await self._attempt(messages, estimate, state)
            except AttemptFailed as first:
                result = await self._retry(first, messages, estimate, state)
        except AttemptFailed as exc:
            self.stats.calls_failed += 1
            kind = exc.kind.value
            self.stats.failures_by_kind[kind] = self.stats.failures_by_kind.get(kind, 0) + 1
            log.warning(
                "llm call failed for good after %d attempt(s): %s",
                state.attempts,
                exc.reason,
                extra={"kind": kind, "status": exc.status, "attempts": state.attempts, "model": self.model},
            )
            raise LLMCallError(exc.kind, exc.reason, status=exc.status, attempts=state.attempts) from exc
        self._account(result)
        self._steps.observe(step, result.completion_tokens)
        return result

    async def _retry(
        self,
        first: AttemptFailed,
        messages: list[Message],
        estimate: int,
        state: _CallState,
    ) -> ChatResult:
        """The attempts after a failed first one, driven by tenacity.

        Most calls succeed at once, and tenacity's machinery costs about a tenth of a call's CPU, so the first
        attempt runs without it. Its failure is handed to tenacity as tenacity's own first attempt: wait, stop and
        retry decide exactly as if it had run it. The give-up deadline counts from this failure, not from the
        call's start: time spent queued for a slot or a reservation is not failing."""
        pending = [first]

        async def attempt() -> ChatResult:
            if pending:
                raise pending.pop()
            return await self._attempt(messages, estimate, state)

        give_up = self.settings.give_up_after_s
        if give_up is not None:
            state.deadline = asyncio.get_running_loop().time() + give_up
        retrying = AsyncRetrying(
            stop=stop_never if give_up is None else _stop_before(time.monotonic() + give_up),
            wait=lambda retry_state: self._wait(retry_state, state),
            retry=retry_if_exception(lambda exc: self._retryable(exc, state)),
            before_sleep=lambda retry_state: self._before_sleep(retry_state, state),
            reraise=True,
        )
        return await retrying(attempt)

    def drain(self) -> None:
        """No more chains will start (the end of a finite run): waiting calls with the most calls left go first."""
        self.pool.drain()
        self.limiter.drain()

    async def _attempt(self, messages: list[Message], estimate: int, state: _CallState) -> ChatResult:
        state.attempts += 1
        self.stats.attempts += 1
        lease = self.pool.lease(state.priority, state.affinity, calls_left=state.calls_left, deadline=state.deadline)
        async with lease as replica:
            state.replica = replica
            opened = replica.breaker.stats.opened  # a result from before the replica's next ejection counts
            session, url = self._sessions[replica.url]
            tokens = estimate + self._completion_estimate(state)
            reservation = await self.limiter.acquire(tokens, priority=state.priority, calls_left=state.calls_left)
            self.stats.in_flight += 1
            sent_at = asyncio.get_running_loop().time()
            started = time.monotonic()
            try:
                raw = await post_chat(session, url, self._body(messages, state))  # to the leased replica
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                failure = classify_exception(exc)
                if failure is None:
                    raise
                self.pool.record(replica, down=failure.kind is ErrorKind.TRANSIENT, opened=opened)
                self._on_failure(failure, None, sent_at)
                raise AttemptFailed(failure) from exc
            finally:
                self.stats.in_flight -= 1
            latency = time.monotonic() - started
            if not 200 <= raw.status < 300:
                failure = classify_reply(raw.status, raw.headers, raw.body)
                self.pool.record(replica, down=failure.kind is ErrorKind.TRANSIENT, opened=opened)
                self._on_failure(failure, raw.headers, sent_at)
                raise AttemptFailed(failure)
            try:
                completion = self._with_usage(parse_completion(raw.body, raw.status), messages)
            except AttemptFailed as exc:  # an answer all the same: the server and its limits are fine
                self.pool.record(replica, down=False, opened=opened)
                self._feedback.on_answer(raw.headers, sent_at)
                self._on_bad_output(exc.failure, state)
                raise
            # Reply lengths vary tenfold: the replica's limit tells a long reply from a queue by its length.
            reply_tokens = completion.completion_tokens or 0
            self.pool.record(replica, down=False, opened=opened, latency_s=latency, completion_tokens=reply_tokens)
        reservation.settle(estimate + (state.max_tokens or reply_tokens))
        self._feedback.on_answer(raw.headers, sent_at)  # after the refund: waiters it wakes see the room it made
        return ChatResult(
            text=completion.text,
            prompt_tokens=completion.prompt_tokens or 0,
            completion_tokens=reply_tokens,
            cached_tokens=completion.cached_tokens,
            finish_reason=completion.finish_reason,
            latency_s=latency,
            attempts=state.attempts,
        )

    def _body(self, messages: list[Message], state: _CallState) -> bytes:
        payload = {"model": self.model, "messages": messages, **self._sampling}
        if state.max_tokens:
            payload["max_tokens"] = state.max_tokens
        if state.seed is not None:
            payload["seed"] = state.seed + state.bad_outputs  # a retry after bad output samples differently
        return encode(payload)

    @staticmethod
    def _with_usage(completion: Completion, messages: list[Message]) -> Completion:
        """Servers that omit usage get our own count, so token totals and costs stay meaningful."""
        if completion.prompt_tokens is not None and completion.completion_tokens is not None:
            return completion
        return Completion(
            text=completion.text,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens or messages_tokens(messages),
            completion_tokens=completion.completion_tokens or count_tokens(completion.text),
            cached_tokens=completion.cached_tokens,
        )

    def _completion_estimate(self, state: _CallState) -> int:
        """Completion tokens to reserve: the max_tokens sent (servers charge it on arrival, as OpenAI does),
        else the largest of the step's recent replies (the surplus comes back when the call settles)."""
        if state.max_tokens:
            return state.max_tokens
        largest = self._steps.largest(state.step)
        return largest if largest is not None else self._initial_completion_estimate

    def _on_failure(self, failure: Failure, headers: Mapping[str, str] | None, sent_at: float) -> None:
        if headers is not None:
            self._feedback.on_answer(headers, sent_at, rate_limited=failure.kind is ErrorKind.RATE_LIMITED)
        self.stats.rate_scale = self.limiter.scale
        if failure.kind is ErrorKind.RATE_LIMITED:
            self.stats.rate_limited_429 += 1
            # Every waiting call backs off, not only this one: the server refuses them all until then.
            self.limiter.cool_down(failure.retry_after_s or self._backoff_initial_s)

    def _on_bad_output(self, failure: Failure, state: _CallState) -> None:
        """A reply cut at a learnt budget is asked again at the ceiling; anything else counts as bad output."""
        ceiling = self._steps.ceiling
        if failure.truncated and self._send_max_tokens and (state.max_tokens or 0) < ceiling:
            log.info("reply of step %s cut at %s tokens: asking again with %d", state.step, state.max_tokens, ceiling)
            state.max_tokens = ceiling
            return
        state.bad_outputs += 1

    @staticmethod
    def _retryable(exc: BaseException, state: _CallState) -> bool:
        if not isinstance(exc, AttemptFailed):
            return False
        if exc.kind is ErrorKind.PERMANENT:
            return False
        if exc.kind is ErrorKind.BAD_OUTPUT:
            return state.bad_outputs <= _BAD_OUTPUT_RETRIES
        return True

    def _wait(self, retry_state: RetryCallState, state: _CallState) -> float:
        """The server's hint when it gave one; nothing when the replica is out of rotation (the pool sends the
        call elsewhere, or holds it) or a reply was cut; else exponential backoff with jitter (half fixed, half
        random)."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        failure = exc.failure if isinstance(exc, AttemptFailed) else None
        if failure is not None and failure.retry_after_s is not None:
            return failure.retry_after_s + random.uniform(0.0, min(0.25, 0.1 * failure.retry_after_s))
        if _ejected(state) or (failure is not None and failure.kind is ErrorKind.BAD_OUTPUT):
            return 0.0
        exponent = min(retry_state.attempt_number - 1, _MAX_BACKOFF_EXPONENT)
        ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2**exponent)
        return random.uniform(ceiling / 2, ceiling)

    def _before_sleep(self, retry_state: RetryCallState, state: _CallState) -> None:
        self.stats.retries += 1
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, AttemptFailed) and not _ejected(state):
            wait = retry_state.upcoming_sleep
            log.info(
                "llm call attempt %d failed (%s), retrying in %.2fs",
                retry_state.attempt_number,
                exc.reason,
                wait,
                extra={"kind": exc.kind.value, "status": exc.status, "attempt": retry_state.attempt_number},
            )

    def _account(self, result: ChatResult) -> None:
        stats = self.stats
        stats.calls_ok += 1
        stats.prompt_tokens += result.prompt_tokens
        stats.completion_tokens += result.completion_tokens
        stats.cached_tokens += result.cached_tokens
        stats.latency_s_sum += result.latency_s
        stats.latency_count += 1
        stats.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_S, result.latency_s)] += 1
        stats.rate_scale = self.limiter.scale
        cost = self.cost_usd(result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        if cost is not None:
            stats.cost_usd += cost


def _stop_before(deadline: float) -> Callable[[RetryCallState], bool]:
    """tenacity's `stop_before_delay`, from a start of our own: stop when the next wait would end past it."""

    def stop(retry_state: RetryCallState) -> bool:
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= deadline

    return stop
