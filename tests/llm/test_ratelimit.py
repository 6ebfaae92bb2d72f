"""The limiter and the priority gate on their own: budgets per second, settling, order, cooldown, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from consumers.llm.ratelimit import RateLimiter


def _now() -> float:
    return asyncio.get_running_loop().time()


def _max_in_window(times: list[float], window: float) -> int:
    """The most admissions in any sliding window of `window` seconds (a little under, for timer slack)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window - 0.01:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_requests_budget_is_held_per_second() -> None:
    limiter = RateLimiter(requests_per_minute=600)  # 10 per second
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire(1)
        times.append(_now())

    t0 = _now()
    await asyncio.gather(*(one() for _ in range(30)))
    assert _max_in_window(times, 1.0) <= 10
    # 10 at once, 10 a second later, 10 a second after that: about two seconds, not thirty, not zero.
    assert 1.9 <= max(times) - t0 < 4.0


async def test_tokens_budget_is_held_per_second() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)  # 100 tokens per second
    t0 = _now()
    for _ in range(3):
        await limiter.acquire(60)
    # 60 fits at once; the next 60 waits for the first to leave the window, the third for the second.
    assert 1.9 <= _now() - t0 < 3.5


async def test_settle_refund_frees_budget_at_once() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)
    reservation = await limiter.acquire(90)
    waiter = asyncio.create_task(limiter.acquire(60))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    t0 = _now()
    reservation.settle(20)  # the call really cost 20: 80 come back
    await asyncio.wait_for(waiter, timeout=0.5)
    assert _now() - t0 < 0.3


async def test_settle_charge_delays_the_next_call() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)
    reservation = await limiter.acquire(30)
    reservation.settle(100)  # it cost a whole second's budget
    t0 = _now()
    await limiter.acquire(10)
    assert _now() - t0 >= 0.8


async def test_call_larger_than_a_slice_goes_alone() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)
    t0 = _now()
    await asyncio.wait_for(limiter.acquire(500), timeout=0.5)  # bigger than 100/s: admitted into an empty window
    assert _now() - t0 < 0.3
    await limiter.acquire(10)
    assert _now() - t0 >= 0.8


async def test_waiters_are_served_by_priority_then_arrival() -> None:
    limiter = RateLimiter(requests_per_minute=600)
    for _ in range(10):
        await limiter.acquire(1)  # the slice is full: everything below queues
    order: list[str] = []

    async def one(name: str, priority: int) -> None:
        await limiter.acquire(1, priority=priority)
        order.append(name)

    tasks = [asyncio.create_task(one(name, p)) for name, p in [("c", 7), ("a1", 2), ("b", 5), ("a2", 2)]]
    await asyncio.gather(*tasks)
    assert order == ["a1", "a2", "b", "c"]


async def test_draining_serves_the_waiters_with_most_calls_left_first() -> None:
    limiter = RateLimiter(requests_per_minute=600)
    for _ in range(10):
        await limiter.acquire(1)  # the slice is full: everything below queues
    order: list[str] = []

    async def one(name: str, priority: int, calls_left: int) -> None:
        await limiter.acquire(1, priority=priority, calls_left=calls_left)
        order.append(name)

    tasks = [asyncio.create_task(one(n, p, c)) for n, p, c in [("old-1", 1, 1), ("new-4", 9, 4), ("old-2", 2, 2)]]
    await asyncio.sleep(0)
    limiter.drain()
    tasks.append(asyncio.create_task(one("oldest-2", 0, 2)))
    await asyncio.gather(*tasks)
    assert order == ["new-4", "oldest-2", "old-2", "old-1"]


async def test_cooldown_holds_every_waiter() -> None:
    limiter = RateLimiter(requests_per_minute=60_000)
    await limiter.acquire(1)
    limiter.cool_down(0.5)
    t0 = _now()
    times = await asyncio.gather(*(_timed(limiter) for _ in range(5)))
    assert all(t - t0 >= 0.45 for t in times)
    assert limiter.cooldown_left() == 0


async def test_cooldown_applies_without_configured_limits() -> None:
    limiter = RateLimiter()
    limiter.cool_down(0.3)
    t0 = _now()
    await limiter.acquire(1)
    assert _now() - t0 >= 0.25


async def _timed(limiter: RateLimiter) -> float:
    await limiter.acquire(1)
    return _now()


async def test_cancelled_waiter_takes_no_budget() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)
    first = await limiter.acquire(100)
    waiter = asyncio.create_task(limiter.acquire(100))
    await asyncio.sleep(0.02)
    first.settle(0)  # admits the waiter synchronously...
    waiter.cancel()  # ...which is cancelled before it ever runs: its tokens must come back
    with pytest.raises(asyncio.CancelledError):
        await waiter
    t0 = _now()
    await asyncio.wait_for(limiter.acquire(100), timeout=0.5)
    assert _now() - t0 < 0.3
    assert limiter.waiting == 0


async def test_cancelled_head_does_not_block_the_queue() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)
    await limiter.acquire(100)
    big = asyncio.create_task(limiter.acquire(100, priority=0))
    small = asyncio.create_task(limiter.acquire(1, priority=1))
    await asyncio.sleep(0.02)
    big.cancel()
    await asyncio.wait_for(small, timeout=2.0)
    assert limiter.waiting == 0


async def test_small_call_uses_slack_the_head_cannot_without_delaying_it() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)  # 100 tokens per second
    await limiter.acquire(70)
    t0 = _now()
    head = asyncio.create_task(_timed_tokens(limiter, 60, priority=0))  # must wait for the 70 to leave
    filler = asyncio.create_task(_timed_tokens(limiter, 20, priority=5))  # fits now, and beside 60 later
    too_big = asyncio.create_task(_timed_tokens(limiter, 35, priority=6))  # does not fit now
    head_at, filler_at, big_at = await asyncio.gather(head, filler, too_big)
    assert filler_at - t0 < 0.3
    assert 0.8 <= head_at - t0 < 1.5
    assert big_at >= head_at


async def test_no_backfill_that_would_delay_the_head() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)
    await limiter.acquire(70)
    t0 = _now()
    head = asyncio.create_task(_timed_tokens(limiter, 90, priority=0))
    filler = asyncio.create_task(_timed_tokens(limiter, 20, priority=5))  # fits now, but not beside 90 later
    head_at, filler_at = await asyncio.gather(head, filler)
    assert 0.8 <= head_at - t0 < 1.5
    assert filler_at >= head_at


async def _timed_tokens(limiter: RateLimiter, tokens: int, priority: int) -> float:
    await limiter.acquire(tokens, priority=priority)
    return _now()


async def test_the_waiters_that_fill_the_window_best_go_beside_the_head() -> None:
    limiter = RateLimiter(tokens_per_minute=6000)  # 100 tokens per second
    await limiter.acquire(100)
    t0 = _now()
    head = asyncio.create_task(_timed_tokens(limiter, 40, priority=0))
    big = asyncio.create_task(_timed_tokens(limiter, 50, priority=1))  # next by arrival, but 40 + 50 leaves 10 over
    small = [asyncio.create_task(_timed_tokens(limiter, 30, priority=p)) for p in (2, 3)]  # 40 + 30 + 30 = 100
    head_at, big_at, *small_at = await asyncio.gather(head, big, *small)
    assert 0.8 <= head_at - t0 < 1.5
    assert all(t - head_at < 0.05 for t in small_at)
    assert big_at - head_at >= 0.9


async def test_members_take_whole_windows_in_turn_by_their_share() -> None:
    limiter = RateLimiter(None, 60 * 1000, slice_s=0.2)  # 200 tokens a 0.2 s window
    boundary = _now() + 0.1
    limiter.align(boundary, 0.2, guard_s=0.01)
    limiter.set_share({1, 3}, 4)  # partitions 1 and 3 of 4: every other window
    times = [await _timed_tokens(limiter, 150, priority=0) for _ in range(4)]  # one call fills a window
    starts = [boundary + math.floor((t - boundary) / 0.2) * 0.2 for t in times]
    windows = [round((s + limiter._wall_offset) / 0.2) for s in starts]  # window numbers on the wall clock
    assert all(w % 2 == 1 for w in windows)
    assert all(b - a == 2 for a, b in itertools.pairwise(windows))  # and every turn is used


async def test_a_share_before_the_servers_windows_are_known_is_a_fraction_of_each() -> None:
    limiter = RateLimiter(None, 6000)  # 100 tokens per second
    limiter.set_share({0, 5}, 4)  # 5 is 1 of 4: two of four shares, 50 tokens per second
    limiter.heard_from_server()
    t0 = _now()
    await limiter.acquire(30)
    await limiter.acquire(30)
    assert _now() - t0 >= 0.9
    limiter.set_share(set(), 4)  # owning nothing: the whole limit again, shared by the server's answers
    await limiter.acquire(40)
    assert _now() - t0 < 1.5


async def test_a_member_sends_one_call_a_window_until_the_server_first_answers() -> None:
    limiter = RateLimiter(None, 60_000)  # 1,000 tokens per second
    limiter.set_share({0}, 3)
    t0 = _now()
    await limiter.acquire(100)
    second = asyncio.create_task(_timed_tokens(limiter, 100, priority=0))
    await asyncio.sleep(0.3)
    assert not second.done()  # 333 tokens of share left, but no answer has dated the windows yet
    limiter.heard_from_server()
    assert await second - t0 < 0.4


async def test_a_member_taking_turns_has_its_partitions_share_of_the_whole_limit_despite_a_fixed_share() -> None:
    limiter = RateLimiter(6000, headroom=0.25)  # 100 requests a second, a fixed quarter of them: 25
    limiter.set_share({0}, 4)  # a group member: one partition of four is a quarter of the whole limit, not of 25
    limiter.heard_from_server()
    t0 = _now()
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire(0)
        times.append(_now() - t0)

    await asyncio.gather(*(one() for _ in range(25)))
    assert max(times) < 0.5  # 25 fit in the first second (6 would, with the fixed share applied again)
    limiter.set_share(set(), 4)  # owning nothing: outside a group's turns the fixed share holds again
    await limiter.acquire(0)
    assert _now() - t0 >= 0.9  # the 26th waits for the second's 25 to leave the window
