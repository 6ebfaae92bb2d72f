"""What the limiter learns from the server's answers: its limits, its windows, the room left, its share."""

from __future__ import annotations

import asyncio

import pytest

from consumers.llm.feedback import LimitFeedback
from consumers.llm.ratelimit import RateLimiter

TPM = 400_000


def _headers(remaining_tokens: int, reset_ms: int, limit: int = TPM) -> dict[str, str]:
    return {
        "x-ratelimit-limit-tokens": str(limit),
        "x-ratelimit-remaining-tokens": str(remaining_tokens),
        "x-ratelimit-reset-tokens": f"{reset_ms}ms",
    }


def test_server_limits_replace_configured_ones() -> None:
    limiter = RateLimiter(600, 1_000_000)
    feedback = LimitFeedback(limiter)
    feedback.on_answer({"x-ratelimit-limit-tokens": str(TPM), "x-ratelimit-limit-requests": "500"}, 0.0)
    assert (limiter.requests_per_minute, limiter.tokens_per_minute) == (500, TPM)


def test_a_server_without_configured_limits_supplies_them() -> None:
    limiter = RateLimiter()
    LimitFeedback(limiter).on_answer(_headers(6000, 500), 0.0)
    assert limiter.enabled and limiter.tokens_per_minute == TPM


def test_share_starts_low_grows_fast_until_a_429_then_slowly() -> None:
    limiter = RateLimiter(None, TPM)
    feedback = LimitFeedback(limiter, initial_scale=0.3, growth=1.25, increase=0.02, backoff=0.7)
    assert limiter.scale == 0.3
    feedback.on_answer({}, 1.0)
    feedback.on_answer({}, 1.5)  # at most one step a window
    assert limiter.scale == pytest.approx(0.375)
    feedback.on_answer({}, 2.0, rate_limited=True)
    feedback.on_answer({}, 2.2, rate_limited=True)  # one cut a window
    assert limiter.scale == pytest.approx(0.2625)
    feedback.on_answer({}, 2.5)  # no growth within a window of the cut
    feedback.on_answer({}, 3.1)
    assert limiter.scale == pytest.approx(0.2825)  # additive after the first 429


async def test_a_call_that_would_not_fit_the_room_left_waits_for_the_next_window() -> None:
    limiter = RateLimiter(None, TPM)
    feedback = LimitFeedback(limiter, initial_scale=1.0)
    loop = asyncio.get_running_loop()
    now = loop.time()
    feedback.on_answer(_headers(remaining_tokens=1500, reset_ms=400), now)
    small = await limiter.acquire(1000)  # fits the 1,500 left
    started = loop.time()
    await limiter.acquire(1000)  # 500 left: refused by the server until its window ends
    waited = loop.time() - started
    assert small.tokens == 1000
    assert 0.3 <= waited <= 0.6


async def test_calls_fill_the_servers_windows_and_skip_their_first_and_last_moments() -> None:
    limiter = RateLimiter(None, 60 * 1000)  # 1,000 tokens a one-second window
    feedback = LimitFeedback(limiter, initial_scale=1.0, guard=0.1, lead=0.05)
    loop = asyncio.get_running_loop()
    now = loop.time()
    feedback.on_answer(_headers(remaining_tokens=1000, reset_ms=950, limit=60 * 1000), now)  # ends at now + 0.95
    await limiter.acquire(600)
    started = loop.time()
    await limiter.acquire(600)  # the window is used up: the next one starts at now + 0.95, not a second later
    assert 0.85 <= loop.time() - started <= 1.02  # a sliding window would have waited a whole second
    assert loop.time() - now >= 0.95 + 0.05 - 0.01  # not in the first moments of the next window either


def test_per_minute_bucket_headers_leave_the_windows_alone() -> None:
    limiter = RateLimiter(None, TPM)
    feedback = LimitFeedback(limiter, initial_scale=1.0)
    feedback.on_answer(_headers(remaining_tokens=390_000, reset_ms=1500), 0.0)  # far more than one window's budget
    assert limiter.tokens_per_minute == TPM
    assert all(b is None or b.boundary is None for b in (limiter._tokens, limiter._requests))


def test_the_window_phase_follows_the_latest_answers_and_ignores_a_held_up_request() -> None:
    limiter = RateLimiter(None, TPM)
    feedback = LimitFeedback(limiter, initial_scale=1.0)
    for i in range(20):  # each dates the end of a window at k + 0.5, a little early by its way to the server
        feedback.on_answer(_headers(remaining_tokens=3000, reset_ms=500 - (i % 5)), 10.0 + i)
    feedback.on_answer(_headers(remaining_tokens=3000, reset_ms=500), 40.3)  # sent 0.7 s before it left
    boundary = limiter._tokens.boundary
    assert boundary is not None and abs((boundary - 0.5) % 1.0) < 0.003


async def test_a_member_with_its_own_windows_keeps_its_whole_share_through_a_429() -> None:
    limiter = RateLimiter(None, TPM)
    feedback = LimitFeedback(limiter, initial_scale=0.3)
    limiter.set_share({0, 1}, 6)
    now = asyncio.get_running_loop().time()
    feedback.on_answer(_headers(remaining_tokens=3000, reset_ms=500), now)
    assert limiter.takes_turns and limiter.scale == 1.0
    feedback.on_answer(_headers(remaining_tokens=0, reset_ms=400), now + 0.1, rate_limited=True)
    assert limiter.scale == 1.0  # an overlap while the group rebalances, not too large a share


def test_limits_learnt_from_the_server_start_at_the_initial_scale_too() -> None:
    limiter = RateLimiter()
    feedback = LimitFeedback(limiter, initial_scale=0.3, growth=1.25)
    feedback.on_answer({}, 0.0)
    feedback.on_answer({"x-ratelimit-limit-tokens": str(TPM)}, 1.0)
    assert limiter.enabled and limiter.scale == 0.3, "N processes told the limit by the server start low as well"
    feedback.on_answer({}, 2.0)
    assert limiter.scale == pytest.approx(0.375)


def test_a_process_with_a_known_share_keeps_its_scale_when_it_learns_the_limits() -> None:
    limiter = RateLimiter()
    limiter.set_share({0}, 2)
    LimitFeedback(limiter, initial_scale=0.3).on_answer({"x-ratelimit-limit-tokens": str(TPM)}, 1.0)
    assert limiter.scale == 1.0
