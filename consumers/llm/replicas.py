"""Replicas of one model behind one client: where each call goes, and how many go to each replica at once.

Every attempt takes a lease from the `ReplicaPool` before it is sent and gives it back when it is answered.
Waiting calls are served by (priority, arrival), like a semaphore's waiters, and once the run drains by the calls
their chain has left first (`types.QueuedCall`); a call is placed on:

- **its document's replica** (`affinity`, the document id): the replica that served the document's last call holds
  the page in its prefix cache, so the next call's prompt, which starts with the same page, is mostly served
  from cache. A call waits for that replica while it is full, unless another replica is clearly less busy (its
  load, requests in flight over its limit, lower by `_SPILL_GAP`): then it moves there, and so does the document.
- otherwise (a document's first call, or its replica is out of rotation) on the replica with the least
  outstanding requests relative to its limit.

At most `max_concurrency` requests are out over all replicas, and each replica's own limit
(`consumers.llm.concurrency`) keeps its batch full without a queue at the server. A replica that keeps failing is
taken out of rotation by its circuit breaker (`consumers.llm.breaker`): its calls go elsewhere, and health checks
(`GET <base>/models`) bring it back. When every replica is out, calls wait here, holding nothing, until one
answers: transient is never final. Health checks and `/metrics` polls go through the client's session of the
replica (`start(sessions)`): the same proxy, key and keep-alive connections as its calls.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from consumers.llm.breaker import BreakerStats, CircuitBreaker
from consumers.llm.concurrency import ConcurrencyLimit, FixedLimit, GradientLimit, SchedulerLimit
from consumers.llm.errors import AttemptFailed, Failure
from consumers.llm.settings import LLMSettings
from consumers.llm.types import ErrorKind, QueuedCall, drain_queue

log = logging.getLogger("consumers.llm")

# A call leaves its document's full replica for one whose load (in flight / limit) is lower by this much: with a
# limit of the batch plus a quarter, a load under 0.8 means free slots in that replica's batch. (A gap of 0.5 kept
# two 16-slot replicas 96.5% busy; 0.2 kept them 99.8% busy, with about the same prefix-cache hits.)
_SPILL_GAP = 0.2
# Documents whose replica is remembered; the oldest are forgotten first (a finished document needs none).
_AFFINITY_MEMORY = 1 << 16
_HEALTH_TIMEOUT_S = 5.0
POOL_CONNECTIONS = 2
"""Connections a replica's session holds beyond `max_concurrency`: a health check and a `/metrics` poll never
wait behind calls for one."""
# vLLM's scheduler gauges (the KV cache gauge was `gpu_cache_usage_perc` before vLLM's V1 engine).
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(slots=True)
class ReplicaStats:
    """One replica's gauges and counters for the metrics exporter; only the pool writes them."""

    url: str
    in_flight: int = 0
    limit: int = 0
    calls: int = 0
    breaker: BreakerStats = field(default_factory=BreakerStats)


@dataclass(slots=True)
class PoolStats:
    """Every replica's stats, and the attempt time spent waiting while no replica was in rotation."""

    replicas: list[ReplicaStats] = field(default_factory=list)
    held_s: float = 0.0

    @property
    def all_down(self) -> bool:
        return all(r.breaker.open for r in self.replicas)


class Replica:
    """One endpoint: its circuit breaker, its concurrency limit and what is in flight there."""

    def __init__(self, url: str, limit: ConcurrencyLimit, breaker: CircuitBreaker) -> None:
        self.url = url
        self.limit = limit
        self.breaker = breaker
        self.in_flight = 0
        self.stats = ReplicaStats(url, limit=limit.value, breaker=breaker.stats)
        self.health_check: asyncio.Task[None] | None = None
        self.watcher: asyncio.Task[None] | None = None  # reads /metrics; ends when the replica has no gauges

    @property
    def room(self) -> int:
        """Calls it may take now: none while out of rotation, one at a time on trial."""
        if self.breaker.is_open:
            return 0
        return (1 if self.breaker.trial else self.limit.value) - self.in_flight

    @property
    def load(self) -> float:
        return self.in_flight / self.limit.value

    def __repr__(self) -> str:
        return f"Replica({self.url!r}, in_flight={self.in_flight}, limit={self.limit.value})"


@dataclass(order=True, slots=True)
class _Waiter(QueuedCall[Replica]):
    affinity: str | None = field(default=None, compare=False)
    deadline: float | None = field(default=None, compare=False)  # loop time: give up if no replica is in rotation


def metrics_url(base_url: str) -> str:
    """vLLM serves /metrics at the server's root, beside /v1."""
    root = base_url.rstrip("/")
    return (root.removesuffix("/v1") or root) + "/metrics"


def read_gauges(text: str) -> tuple[float, float, float | None] | None:
    """(running, waiting, KV cache usage) summed over models from a Prometheus text page; None without them."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == _RUNNING or sample.name == _WAITING or sample.name in _KV_USAGE:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    if _RUNNING not in values or _WAITING not in values:
        return None
    kv = next((values[name] for name in _KV_USAGE if name in values), None)
    return values[_RUNNING], values[_WAITING], kv


class ReplicaPool:
    """Leases on replicas (see the module docstring); `start(sessions)` watches them, `aclose()` stops that."""

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self.max_concurrency = settings.max_concurrency
        self.adaptive = settings.adaptive_concurrency and not settings.rate_limited
        self.replicas = [
            Replica(
                url,
                SchedulerLimit(self.max_concurrency) if self.adaptive else FixedLimit(self.max_concurrency),
                CircuitBreaker(
                    url,
                    threshold=settings.eject_after_failures,
                    probe_initial_s=settings.health_check_initial_s,
                    probe_max_s=settings.health_check_max_s,
                ),
            )
            for url in settings.base_urls
        ]
        self.stats = PoolStats([r.stats for r in self.replicas])
        self.in_flight = 0
        self._affinity: OrderedDict[str, Replica] = OrderedDict()
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._draining = False
        self._sessions: Mapping[str, aiohttp.ClientSession] = {}

    async def start(self, sessions: Mapping[str, aiohttp.ClientSession]) -> None:
        """Start watching the replicas through `sessions` (replica URL -> its session, `transport.open_session`
        with the replica's proxy), which the caller owns and closes after `aclose()`."""
        if self._sessions:
            return
        self._sessions = sessions
        if self.adaptive:
            for r in self.replicas:
                r.watcher = asyncio.create_task(self._watch(r), name=f"watch {r.url}")

    async def aclose(self) -> None:
        tasks = [t for r in self.replicas for t in (r.watcher, r.health_check) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in self.replicas:
            r.watcher = None
        self._sessions = {}

    # -- leases ---------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def lease(
        self, priority: int = 0, affinity: str | None = None, *, calls_left: int = 1, deadline: float | None = None
    ) -> AsyncIterator[Replica]:
        """A replica to send one attempt to; held until the block ends (the answer, or the attempt's failure).
        Past `deadline` (loop time; a user's `give_up_after_s`) while no replica is in rotation, the attempt fails
        as transient; a call that waits only for a slot of a replica in rotation waits on."""
        held = time.monotonic() if self.stats.all_down else None
        replica = await self._acquire(priority, affinity, calls_left, deadline)
        if held is not None:
            self.stats.held_s += time.monotonic() - held
        try:
            yield replica
        finally:
            self._release(replica)

    def drain(self) -> None:
        """No more chains will start: the calls with the most calls left go first, those waiting now included."""
        self._draining = True
        drain_queue(self._waiters)

    def _release(self, replica: Replica) -> None:
        replica.in_flight -= 1
        replica.stats.in_flight = replica.in_flight
        self.in_flight -= 1
        self._dispatch()

    async def _acquire(self, priority: int, affinity: str | None, calls_left: int, deadline: float | None) -> Replica:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(priority, calls_left, next(self._seq), loop.create_future(), affinity, deadline)
        if self._draining:
            waiter.drain()
        bisect.insort(self._waiters, waiter)
        self._dispatch()
        timer = None if deadline is None else loop.call_at(deadline, self._expire)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(waiter.future.result())  # placed as we were cancelled: give the place back
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self) -> None:
        """While no replica is in rotation, fail the waiters past their deadline (at a deadline, and whenever a
        breaker opens); a deadline passed while some replica is in rotation holds nobody up."""
        if not self.stats.all_down:
            return
        now = asyncio.get_running_loop().time()
        for waiter in self._waiters:
            if waiter.deadline is not None and waiter.deadline <= now and not waiter.future.done():
                waiter.future.set_exception(AttemptFailed(Failure(ErrorKind.TRANSIENT, "no replica in rotation")))

    def _dispatch(self) -> None:
        """Place waiters, best priority first, while there is room; a waiter whose replica is full is passed
        over (it does not block the others, which may go elsewhere)."""
        if self.in_flight >= self.max_concurrency:
            return  # nobody can be placed: the common case at capacity, so no pass over the waiters
        kept: list[_Waiter] = []
        for i, waiter in enumerate(self._waiters):
            if waiter.future.done():
                continue  # cancelled
            if self.in_flight >= self.max_concurrency or not any(r.room > 0 for r in self.replicas):
                kept.extend(self._waiters[i:])  # cancelled ones among them are dropped by a later pass
                break
            replica = self._choose(waiter.affinity)
            if replica is None:
                kept.append(waiter)
                continue
            replica.in_flight += 1
            replica.stats.in_flight = replica.in_flight
            replica.stats.calls += 1
            self.in_flight += 1
            if waiter.affinity is not None:
                self._remember(waiter.affinity, replica)
            waiter.future.set_result(replica)
        self._waiters = kept

    def _choose(self, affinity: str | None) -> Replica | None:
        free = [r for r in self.replicas if r.room > 0]
        if not free:
            return None
        least = min(free, key=lambda r: (r.load, r.in_flight))
        home = self._affinity.get(affinity) if affinity is not None else None
        if home is None or home.breaker.is_open:
            return least
        if home.room > 0:
            return home
        return least if home.load - least.load >= _SPILL_GAP else None

    def _remember(self, affinity: str, replica: Replica) -> None:
        self._affinity[affinity] = replica
        self._affinity.move_to_end(affinity)
        if len(self._affinity) > _AFFINITY_MEMORY:
            self._affinity.popitem(last=False)

    # -- results --------------------------------------------------------------------------------------------

    def record(
        self, replica: Replica, *, down: bool, opened: int, latency_s: float = 0.0, completion_tokens: int = 0
    ) -> None:
        """An attempt's result: `down` for a transient failure, else an answer (`latency_s` and the reply's
        `completion_tokens` when it succeeded); `opened` is the replica's breaker count when it was leased."""
        if down:
            if replica.breaker.record(down=True, opened=opened):
                self._start_health_checks(replica)
                self._expire()
            return
        replica.breaker.record(down=False, opened=opened)
        if latency_s > 0:
            replica.limit.on_answer(latency_s, completion_tokens, replica.in_flight)
            replica.stats.limit = replica.limit.value

    def _start_health_checks(self, replica: Replica) -> None:
        if replica.health_check is None or replica.health_check.done():
            replica.health_check = asyncio.create_task(self._health_checks(replica), name=f"health {replica.url}")

    async def _health_checks(self, replica: Replica) -> None:
        while replica.breaker.is_open:
            await asyncio.sleep(replica.breaker.probe_wait)
            replica.breaker.probed(up=await self._answers(replica))
        self._dispatch()

    async def _answers(self, replica: Replica) -> bool:
        """Whether the server answers at all (an error status below 500, say 401, also proves it is up)."""
        timeout = aiohttp.ClientTimeout(total=min(_HEALTH_TIMEOUT_S, self.settings.request_timeout_s))
        try:
            async with self._sessions[replica.url].get(replica.url + "/models", timeout=timeout) as response:
                return response.status < 500
        except (aiohttp.ClientError, TimeoutError):
            return False

    # -- adaptive limits ------------------------------------------------------------------------------------

    async def _watch(self, replica: Replica) -> None:
        """Read the replica's scheduler gauges every `scheduler_poll_s`; a replica without them (no /metrics,
        or not vLLM's) gets a latency-based limit instead."""
        session, url = self._sessions[replica.url], metrics_url(replica.url)
        timeout = aiohttp.ClientTimeout(total=max(1.0, 4 * self.settings.scheduler_poll_s))
        while True:
            reading: tuple[float, float, float | None] | None = None
            try:
                async with session.get(url, timeout=timeout) as response:
                    if response.status < 500:
                        reading = read_gauges(await response.text()) if response.status == 200 else None
                        if reading is None:
                            break
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass  # down or restarting: the breaker deals with it; keep the limit and read again
            if reading is not None and isinstance(replica.limit, SchedulerLimit):
                replica.limit.on_reading(*reading, in_flight=replica.in_flight)
                log.debug(
                    "llm endpoint %s: running %g, waiting %g, kv %s; in flight %d, limit %d, %d calls waiting here",
                    replica.url,
                    reading[0],
                    reading[1],
                    reading[2],
                    replica.in_flight,
                    replica.limit.value,
                    len(self._waiters),
                )
                replica.stats.limit = replica.limit.value
                self._dispatch()
            await asyncio.sleep(self.settings.scheduler_poll_s)
        log.info("llm endpoint %s has no vLLM scheduler gauges: sizing its concurrency from latency", replica.url)
        replica.limit = GradientLimit(self.max_concurrency)
        replica.stats.limit = replica.limit.value
        self._dispatch()
