"""Several replicas behind one client: routing, document affinity, ejection and return, concurrency per replica."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from consumers.llm.client import OpenAIChatClient
from consumers.llm.concurrency import FixedLimit, GradientLimit, SchedulerLimit
from consumers.llm.replicas import Replica, ReplicaPool, metrics_url, read_gauges
from consumers.llm.settings import LLMSettings, Sampling
from devtools.fakeopenai import FakeOpenAI, Fault

pytestmark = pytest.mark.timeout(120)


def _settings(*urls: str, **changes: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "base_urls": list(urls),
        "api_key": "sk-test",
        "model": "gpt-4o-mini",
        "request_timeout_s": 5.0,
        "health_check_initial_s": 0.05,
        "health_check_max_s": 0.2,
        "sampling": Sampling(temperature=1.0),
    }
    values.update(changes)
    return LLMSettings(**values)


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _served(server: FakeOpenAI) -> list[str]:
    return [r.messages[-1]["content"] for r in server.records if r.status == 200]


def test_settings_take_one_url_a_comma_separated_list_or_a_list() -> None:
    assert LLMSettings(base_url="http://a:8000/v1").base_urls == ("http://a:8000/v1",)
    two = LLMSettings(base_url="http://a:8000/v1, http://b:8000/v1/")
    assert two.base_urls == ("http://a:8000/v1", "http://b:8000/v1")
    listed = LLMSettings(base_urls=["http://a:8000/v1,http://b:8000/v1", "http://a:8000/v1", "http://c:8000/v1"])
    assert listed.base_urls == ("http://a:8000/v1", "http://b:8000/v1", "http://c:8000/v1")
    assert LLMSettings(base_url="http://a:8000/v1", max_requests_per_minute=60).rate_limited
    assert not LLMSettings(base_url="http://a:8000/v1").rate_limited


async def test_first_calls_spread_evenly_and_a_documents_calls_stay_on_its_replica(
    fake_llm_factory: Callable[..., FakeOpenAI],
) -> None:
    a, b = fake_llm_factory(latency_s=0.05), fake_llm_factory(latency_s=0.05)

    async def document(client: OpenAIChatClient, doc: str) -> None:
        for step in ("persona", "request", "response"):
            await client.chat(_messages(f"{doc} {step}"), step=step, affinity=doc)

    async with OpenAIChatClient(_settings(a.url, b.url, adaptive_concurrency=False)) as client:
        await asyncio.gather(*(document(client, f"doc-{i}") for i in range(8)))
    docs_on = [{text.split()[0] for text in _served(s)} for s in (a, b)]
    assert len(docs_on[0]) == len(docs_on[1]) == 4, docs_on  # least outstanding: the first calls alternate
    assert not docs_on[0] & docs_on[1], "a document's calls went to two replicas"
    assert len(a.records) + len(b.records) == 24


class _Holder:
    """Takes a lease and keeps it until `release()`."""

    def __init__(self, pool: ReplicaPool, affinity: str | None = None, priority: int = 0, calls_left: int = 1) -> None:
        self.replica: Replica | None = None
        self._release = asyncio.Event()
        self.task = asyncio.create_task(self._hold(pool, affinity, priority, calls_left))

    async def _hold(self, pool: ReplicaPool, affinity: str | None, priority: int, calls_left: int) -> None:
        async with pool.lease(priority, affinity, calls_left=calls_left) as replica:
            self.replica = replica
            await self._release.wait()

    async def release(self) -> None:
        self._release.set()
        await self.task


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_full_replica_keeps_its_documents_unless_another_is_far_less_busy() -> None:
    pool = ReplicaPool(_settings("http://a:1/v1", "http://b:1/v1", adaptive_concurrency=False))
    a, b = pool.replicas
    a.limit = b.limit = FixedLimit(10)
    on_a = [_Holder(pool, "d") for _ in range(10)]
    on_b = [_Holder(pool, "e") for _ in range(9)]
    await _settle()
    assert [h.replica for h in on_a] == [a] * 10 and [h.replica for h in on_b] == [b] * 9

    # a is full, b 90% busy: not far less busy, so d's next call waits for a
    waiting = _Holder(pool, "d")
    await _settle()
    assert waiting.replica is None
    await on_a.pop().release()
    await _settle()
    assert waiting.replica is a

    # b 70% busy against a full a: the call moves, and the document with it
    await on_b.pop().release()
    await on_b.pop().release()
    moved = _Holder(pool, "d")
    await _settle()
    assert moved.replica is b
    following = _Holder(pool, "d")
    await _settle()
    assert following.replica is b
    for h in [*on_a, *on_b, waiting, moved, following]:
        await h.release()
    assert pool.in_flight == a.in_flight == b.in_flight == 0


async def test_waiters_are_placed_by_priority_and_a_cancelled_one_leaves_nothing_behind() -> None:
    pool = ReplicaPool(_settings("http://a:1/v1", max_concurrency=1, adaptive_concurrency=False))
    first = _Holder(pool)
    await _settle()
    waiters = {p: _Holder(pool, priority=p) for p in (9, 4, 6, 1)}
    cancelled = _Holder(pool, priority=0)
    await _settle()
    cancelled.task.cancel()
    await asyncio.gather(cancelled.task, return_exceptions=True)
    order = []
    await first.release()
    for _ in range(4):
        await _settle()
        [(p, h)] = [(p, h) for p, h in waiters.items() if h.replica is not None and p not in order]
        order.append(p)
        await h.release()
    assert order == [1, 4, 6, 9]
    assert pool.in_flight == 0


async def _served_in_order(waiters: dict[str, _Holder]) -> list[str]:
    order: list[str] = []
    for _ in waiters:
        await _settle()
        [(name, h)] = [(n, h) for n, h in waiters.items() if h.replica is not None and n not in order]
        order.append(name)
        await h.release()
    return order


async def test_draining_ranks_the_calls_already_waiting_by_calls_left_then_priority() -> None:
    """At the end of a finite run the newest documents' first calls already wait, under their age alone, behind
    everything older: ranked again when draining starts, they (the longest chains) go first."""
    pool = ReplicaPool(_settings("http://a:1/v1", max_concurrency=1, adaptive_concurrency=False))
    first = _Holder(pool)
    await _settle()
    waiters = {
        "old, last call": _Holder(pool, priority=1, calls_left=1),
        "new, first of four": _Holder(pool, priority=9, calls_left=4),
        "older, two left": _Holder(pool, priority=2, calls_left=2),
        "new, first of three": _Holder(pool, priority=8, calls_left=3),
    }
    await _settle()
    pool.drain()
    waiters["oldest, two left, came after"] = _Holder(pool, priority=0, calls_left=2)
    await _settle()
    await first.release()
    assert await _served_in_order(waiters) == [
        "new, first of four",
        "new, first of three",
        "oldest, two left, came after",
        "older, two left",
        "old, last call",
    ]
    assert pool.in_flight == 0


async def test_a_place_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    pool = ReplicaPool(_settings("http://a:1/v1", max_concurrency=1, adaptive_concurrency=False))
    holder = _Holder(pool)
    await _settle()
    first, second = _Holder(pool, priority=0), _Holder(pool, priority=1)
    await _settle()
    holder._release.set()
    await _settle()  # the holder's lease ends and its place goes to `first`, which is cancelled before it runs
    first.task.cancel()
    await asyncio.gather(first.task, return_exceptions=True)
    await _settle()
    assert second.replica is pool.replicas[0]
    await second.release()
    assert pool.in_flight == 0


async def test_a_stopped_replica_is_ejected_and_back_in_rotation_once_it_answers(
    fake_llm_factory: Callable[..., FakeOpenAI],
) -> None:
    a, b = fake_llm_factory(latency_s=0.02), fake_llm_factory(latency_s=0.02)
    settings = _settings(a.url, b.url, adaptive_concurrency=False)
    async with OpenAIChatClient(settings, backoff_initial_s=0.02, backoff_max_s=0.05) as client:
        await asyncio.gather(*(client.chat(_messages(f"before {i}"), affinity=f"d{i}") for i in range(10)))
        assert _served(b), "both replicas take calls"
        b.stop()
        await asyncio.gather(*(client.chat(_messages(f"during {i}"), affinity=f"d{i}") for i in range(30)))
        replica_b = client.pool.replicas[1]
        assert replica_b.breaker.is_open
        assert not any(text.startswith("during") for text in _served(b))
        b.start()  # the same port: the replica restarting
        assert replica_b.health_check is not None
        await asyncio.wait_for(replica_b.health_check, 10)  # ends once a health check is answered
        await asyncio.gather(*(client.chat(_messages(f"after {i}"), affinity=f"n{i}") for i in range(20)))
    assert client.stats.calls_failed == 0
    assert client.stats.calls_ok == 60
    assert replica_b.breaker.stats.opened == 1 and not replica_b.breaker.is_open
    assert any(text.startswith("after") for text in _served(b)), "the restarted replica got no traffic"


async def test_a_late_failure_of_a_call_sent_before_the_ejection_changes_nothing(fake_llm: FakeOpenAI) -> None:
    # The first call hangs until its timeout; the second's 503 ejects the replica, a health check readmits it and
    # the second succeeds there. The first's timeout arrives after that: it says nothing about the server now.
    fake_llm.inject(Fault.timeout(hang_s=10.0))
    fake_llm.inject(Fault.server_error(503))
    settings = _settings(fake_llm.url, request_timeout_s=1.0, eject_after_failures=1, adaptive_concurrency=False)
    async with OpenAIChatClient(settings, backoff_initial_s=0.02, backoff_max_s=0.05) as client:
        late = asyncio.create_task(client.chat(_messages("hangs")))
        await asyncio.sleep(0.2)  # the first call is at the server, hanging
        await client.chat(_messages("fails, then succeeds on trial"))
        breaker = client.pool.replicas[0].breaker
        assert breaker.stats.opened == 1 and not breaker.is_open
        assert (await late).attempts == 2
    assert breaker.stats.opened == 1, "a timeout from before the ejection took the replica out again"


async def test_calls_wait_while_every_replica_is_out_and_go_on_when_one_answers(
    fake_llm_factory: Callable[..., FakeOpenAI],
) -> None:
    a, b = fake_llm_factory(), fake_llm_factory()
    settings = _settings(a.url, b.url, adaptive_concurrency=False, eject_after_failures=1)
    a.stop()
    b.stop()
    async with OpenAIChatClient(settings, backoff_initial_s=0.02, backoff_max_s=0.05) as client:
        call = asyncio.create_task(client.chat(_messages("patient")))
        await asyncio.sleep(1.0)
        assert not call.done()
        assert client.stats.pool.all_down
        a.start()
        result = await asyncio.wait_for(call, 10)
    assert result.text == a.records[-1].reply
    assert client.stats.pool.held_s > 0.3


async def test_scheduler_gauges_size_the_limit_to_the_batch(fake_llm: FakeOpenAI) -> None:
    fake_llm.configure(capacity=4, latency_s=0.1)
    settings = _settings(fake_llm.url, max_concurrency=32, scheduler_poll_s=0.05)
    async with OpenAIChatClient(settings) as client:
        [replica] = client.pool.replicas
        started = time.monotonic() - fake_llm._t0
        calls = asyncio.gather(*(client.chat(_messages(f"call {i}"), priority=-i) for i in range(160)))
        # later calls go first: what waits here is served by priority, what waits at the server in arrival order
        await asyncio.sleep(1.0)  # past the first 16, sent at once (the limit starts at 16)
        limits = []
        while not calls.done():
            limits.append(replica.limit.value)
            await asyncio.sleep(0.02)
        await calls
        ended = time.monotonic() - fake_llm._t0
    assert isinstance(replica.limit, SchedulerLimit)
    assert replica.limit.capacity == 4
    # The batch and a small queue (4 + 1), not the 32 allowed. A probe above it (after a reading that caught the
    # batch between two requests) is cut back at the next reading, so it shows in the maximum, not the median.
    assert 4 <= statistics.median(limits) <= 6, limits
    assert max(limits[len(limits) // 4 :]) <= 2 * 5, limits
    assert fake_llm.stats().busy_slots(started + 1.0, ended - 0.5) >= 0.8 * 4
    # The first 16 went out at once (the limit starts at 16); of the rest, which waited here, the latest-created
    # calls (best priority) reached the server first.
    arrived = [int(r.messages[-1]["content"].split()[1]) for r in fake_llm.records[16:]]
    assert sum(arrived[:40]) / 40 > sum(arrived[-40:]) / 40 + 60


async def test_without_scheduler_gauges_latency_sizes_the_limit(fake_llm: FakeOpenAI) -> None:
    """Replies of 40-200 words, so service times from 0.2 to 0.8 s: the limit tells a long reply from a queue and
    keeps the 4-request batch full with a short queue, far below the 32 allowed. (It starts at 8, already a
    queue for this batch, so it never sees the latency without one and keeps up to twice the batch out.)
    Latency long enough that a loaded machine's event-loop stalls do not read as a queue."""
    fake_llm.configure(capacity=4, latency_s=0.1, latency_per_token_s=0.002, expose_metrics=False)
    settings = _settings(fake_llm.url, max_concurrency=32)
    async with OpenAIChatClient(settings) as client:
        await asyncio.sleep(0.3)  # the pool finds no gauges
        [replica] = client.pool.replicas
        started = time.monotonic() - fake_llm._t0
        calls = asyncio.gather(*(client.chat(_messages(f"call {i}")) for i in range(120)))
        limits = []
        while not calls.done():
            limits.append(replica.limit.value)
            await asyncio.sleep(0.05)
        await calls
        ended = time.monotonic() - fake_llm._t0
    assert isinstance(replica.limit, GradientLimit)
    assert statistics.median(limits) <= 12, limits
    assert fake_llm.stats().busy_slots(started + 1.0, ended - 0.5) >= 0.8 * 4


def test_scheduler_limit_grows_into_room_and_shrinks_when_requests_wait() -> None:
    limit = SchedulerLimit(64, initial=8)
    limit.on_reading(running=8, waiting=0, kv_usage=0.3, in_flight=8)
    assert limit.value == 16  # nothing waits, no capacity seen yet: double
    limit.on_reading(running=10, waiting=0, kv_usage=0.99, in_flight=16)
    assert limit.value == 16  # the KV cache is full: no more
    limit.on_reading(running=10, waiting=6, kv_usage=0.99, in_flight=16)
    assert (limit.capacity, limit.queue(), limit.value) == (10, 2, 12)  # all the excess over the queue: ours alone
    limit.on_reading(running=6, waiting=0, kv_usage=0.5, in_flight=12)
    assert limit.value == 18  # four free slots and the queue


def test_clients_of_one_replica_each_move_by_their_share_of_what_it_holds() -> None:
    """The gauges are the server's: four consumers read the same excess (or room). Each moving by all of it,
    together they overshot four times over and the queue swung; each moves by its share of the requests there."""
    limits = [SchedulerLimit(64, initial=14) for _ in range(4)]
    for limit in limits:  # a batch of 32 and 24 waiting, of which a quarter's queue (8) is wanted; each holds 14
        limit.on_reading(running=32, waiting=24, kv_usage=0.5, in_flight=14)
    assert [limit.value for limit in limits] == [10] * 4  # a quarter of the 16 too many each: 32 + 8 in all
    for limit in limits:  # 4 of the 8 wanted wait, each client at its limit: each sends a quarter of 4 more
        limit.on_reading(running=32, waiting=4, kv_usage=0.5, in_flight=9)
    assert [limit.value for limit in limits] == [11] * 4


def test_gauges_are_read_from_a_vllm_metrics_page() -> None:
    page = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 12.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.875
"""
    assert read_gauges(page) == (12.0, 3.0, 0.875)
    assert read_gauges("# TYPE other gauge\nother 1.0\n") is None
    assert metrics_url("http://vllm-0:8000/v1") == "http://vllm-0:8000/metrics"
    assert metrics_url("http://gw/llm/v1/") == "http://gw/llm/metrics"
