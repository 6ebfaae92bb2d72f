"""`GradientLimit` against a model of a server without vLLM's gauges: a batch of `capacity` requests served at
once, the rest queued in arrival order, each request's service time the decoder's (an overhead plus a time per
output token, the reply's length drawn per request). Simulated time, so each case runs thousands of calls in
milliseconds and the same way on any machine; the limit reads it through its injected clock."""

from __future__ import annotations

import heapq
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from consumers.llm.concurrency import GradientLimit


@dataclass
class Served:
    """What the simulated server saw: the limit after each answer, and how busy its slots were."""

    limits: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # when each answer came
    busy_slot_s: float = 0.0
    capacity_s: float = 0.0

    @property
    def busy(self) -> float:
        return self.busy_slot_s / self.capacity_s


def serve(
    limits: GradientLimit | list[GradientLimit],
    clock: list[float],
    *,
    calls: int = 2000,
    capacity: Callable[[float], int] = lambda now: 32,
    slower: Callable[[float], float] = lambda now: 1.0,
    overhead_s: float = 0.3,
    per_token_s: float = 0.004,
    reply_tokens: tuple[int, int] = (50, 260),
    noise: float = 0.0,
    seed: int = 0,
) -> Served:
    """Each client (a limit) keeps `value` calls out (it has work for all of them) until `calls` were answered;
    `Served.limits` holds the sum of the limits after each answer."""
    clients = limits if isinstance(limits, list) else [limits]
    rng = random.Random(seed)
    running: list[tuple[float, int, int, float, int]] = []  # (ends, seq, client, sent, tokens)
    queued: deque[tuple[int, float]] = deque()  # (client, sent)
    served = Served()
    out = [0] * len(clients)
    seq = 0
    now = 0.0

    def start(client: int, sent: float) -> None:
        nonlocal seq
        seq += 1
        tokens = rng.randint(*reply_tokens)
        service = (overhead_s + per_token_s * tokens) * slower(now) * (1 + rng.uniform(-noise, noise))
        heapq.heappush(running, (now + service, seq, client, sent, tokens))

    while len(served.limits) < calls:
        for client, limit in enumerate(clients):
            while out[client] < limit.value:
                out[client] += 1
                queued.append((client, now))
        while queued and len(running) < capacity(now):
            start(*queued.popleft())
        ends, _, client, sent, tokens = heapq.heappop(running)
        served.busy_slot_s += (len(running) + 1) * (ends - now)
        served.capacity_s += capacity(now) * (ends - now)
        now = clock[0] = ends
        clients[client].on_answer(now - sent, tokens, out[client])
        out[client] -= 1
        served.limits.append(sum(limit.value for limit in clients))
        served.times.append(now)
    return served


def _limit(ceiling: int = 64, **kwargs: int) -> tuple[GradientLimit, list[float]]:
    clock = [0.0]
    return GradientLimit(ceiling, clock=lambda: clock[0], **kwargs), clock


def test_replies_of_every_length_keep_the_batch_full_and_the_queue_short() -> None:
    """Replies of 50 to 260 tokens take 0.5 to 1.3 s without any queue: a limit that took the spread for a queue
    (the latency against the fastest replies) shrank to 1-4 requests and served a 32-request batch at a tenth of
    its throughput. Told the reply's length, it sees the queue alone."""
    for noise in (0.0, 0.3):
        limit, clock = _limit()
        served = serve(limit, clock, noise=noise)
        steady = served.limits[500:]
        assert 32 <= statistics.median(steady) <= 48, (noise, steady[::50])
        assert min(steady) >= 24, (noise, steady[::50])
        assert served.busy >= 0.95, (noise, served.busy)


def test_settles_near_a_queueing_servers_capacity_and_follows_it_down() -> None:
    """Fixed service times, a batch of 16, a ceiling far above it: the limit is the batch and a small queue. When
    other clients take half the batch, latency grows and the limit follows."""
    limit, clock = _limit(ceiling=256, initial=4)
    served = serve(limit, clock, calls=4000, capacity=lambda now: 16 if now < 120 else 8, reply_tokens=(100, 100))
    before = served.limits[1000:1500]
    after = served.limits[-1000:]
    assert 16 <= statistics.median(before) <= 24 and max(before) <= 32, before[::25]
    assert 8 <= statistics.median(after) <= 14, after[::25]
    assert served.busy >= 0.95, served.busy


def test_a_limit_cut_to_one_fills_the_batch_again_within_seconds() -> None:
    """The server had room for one request of ours (others held the rest) until t = 60 s, then all 32 slots are
    ours. Rounds are at least 8 answers, so from 1 by square roots (1, 2, 4, ...) it took 8 answers one after
    another per step: 25 s to be back at the batch."""
    limit, clock = _limit()
    served = serve(limit, clock, calls=2000, capacity=lambda now: 1 if now < 60 else 32)
    freed = next(i for i, t in enumerate(served.times) if t >= 60)
    assert served.limits[freed] <= 3, served.limits[freed - 20 : freed]
    back = next(t for t, value in zip(served.times[freed:], served.limits[freed:], strict=True) if value >= 32)
    assert back - 60 <= 8, back


def test_the_time_per_token_is_the_decoders_while_a_queue_grows() -> None:
    """Rounds of 8 answers; from round to round the server's queue adds 0.1 s more wait and the replies happen to
    be 20 tokens longer. Fitted across rounds, the growing wait reads as 4.5 ms more per token (8.5 ms on a 4 ms
    decoder: the reference overhead then falls below the server's and the limit cuts itself down); within each
    round the wait is the same for every reply, and the fit is the decoder's."""
    limit, clock = _limit()
    for answer in range(8 * 12):
        round_, rank = divmod(answer, 8)
        tokens = 50 + 20 * round_ + 10 * rank
        clock[0] += 100.0  # each answer to a call sent after the last change: every one counts
        limit.on_answer(0.3 + 0.004 * tokens + 0.1 * round_, tokens, in_flight=0)
    assert abs(limit.per_token.value() - 0.004) < 1e-6, limit.per_token.value()


def test_answers_to_calls_sent_before_a_cut_do_not_cut_again() -> None:
    """Past a doubling to 64 on a 32-request batch, the calls already queued at the server come back slow for a
    while after the cut; counted again, they cut the limit to 4-15, far below the batch. (A probe round, at three
    quarters of the limit, may come within these 800 answers.)"""
    for seed in range(5):
        limit, clock = _limit()
        served = serve(limit, clock, calls=800, seed=seed)
        peak = served.limits.index(64)
        assert min(served.limits[peak:]) >= 24, (seed, served.limits[peak::10])


def test_a_server_that_becomes_slower_for_everyone_is_not_taken_for_a_queue() -> None:
    """Every request takes twice as long from t = 60 s on (longer prompts, a busier host): the first cut does
    not bring latency back, so the limit takes the slower latency as the one without a queue, and the batch
    stays full."""
    limit, clock = _limit()
    served = serve(limit, clock, calls=4000, slower=lambda now: 1.0 if now < 60 else 2.0)
    assert clock[0] > 120
    late = served.limits[-1500:]
    assert 32 <= statistics.median(late) <= 48 and min(late) >= 24, late[::50]


def test_a_standing_queue_is_never_taken_for_no_load() -> None:
    """A long steady run: the small queue the limit keeps never becomes the reference (a round at three quarters
    of the limit every 20 s measures the server without it), so the limit does not creep up to the ceiling."""
    limit, clock = _limit(ceiling=256)
    served = serve(limit, clock, calls=30_000, noise=0.2)
    assert statistics.median(served.limits[-3000:]) <= 48, served.limits[-3000::100]
    assert served.busy >= 0.95


def test_consumers_sharing_a_server_share_its_batch_and_do_not_grow_its_queue() -> None:
    """Four consumers on one 32-request batch, each with its own limit: each sees the others' queue too. Taking
    that queue for the server's latency (a rule that did: "cuts that do not help mean a slower server") made the
    four limits grow without end, to 130 after 20 minutes; they stay near the batch."""
    clock = [0.0]
    limits = [GradientLimit(64, clock=lambda: clock[0]) for _ in range(4)]
    served = serve(limits, clock, calls=40_000, noise=0.2)
    assert clock[0] > 1000
    late = served.limits[-10_000:]
    assert statistics.median(late) <= 56 and max(late) <= 96, late[::500]
    assert served.busy >= 0.95, served.busy
