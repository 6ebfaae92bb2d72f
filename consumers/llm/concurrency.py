"""How many requests one replica gets at once: enough to keep its batch full, not so many that they queue there.

A vLLM server runs a bounded batch; requests beyond it wait in the server's queue, in arrival order, where this
client's priorities (a started document's next call first, the longest chains at the end of a run) no longer
apply and where a call cannot move to another, idle replica. So the limit is what the batch holds plus a small
queue that refills a freed slot at once:

- `SchedulerLimit`, where the server exposes vLLM's scheduler gauges on `/metrics`: fewer when requests wait there
  beyond the small queue, more when fewer than the queue wait, the batch runs below the size it reached when
  requests last waited, and the KV cache has room.
- `GradientLimit` otherwise, from latency (after Netflix's concurrency-limits gradient2): a round of answers'
  mean latency against what the same replies took without a queue. A reply's service time is an overhead plus
  a time per output token, and reply lengths vary tenfold, so the per-token time is fitted over the recent
  answers (a queue adds the same wait to short and long replies) and the no-queue overhead is the least of the
  rounds of the last minute, among them a probe every 20 s at three quarters of the limit (below the batch, so
  that least is the server's, not the small queue the limit keeps). Latency past `tolerance` times that means
  requests queue, and the limit shrinks by the ratio; below it, a limit that was reached grows (doubling until
  the first queue is seen, then by its square root; doubling again after rounds with no queue at all, and back
  to a whole round at once from below one).
- `FixedLimit` for servers whose rate limits decide what goes out (OpenAI): the configured concurrency.

Every limit stays within 1 and the ceiling (`--max-concurrency`, which also bounds the sum over replicas).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

# Readings with requests waiting that the batch's capacity is the largest of (the batch may shrink when the KV
# cache binds: long prompts leave room for fewer sequences).
_CAPACITY_READINGS = 20


# A probe round's share of the limit: the limit keeps the batch and a queue of up to `tolerance - 1` of it, so
# three quarters is below the batch (the server has a free slot) while costing a fraction of one round.
_PROBE_SHARE = 0.75

# Rounds in a row that find the server with room (latency within a fifth of the tolerance band of the latency
# without a queue, the limit reached) before growth doubles again: a consumer that others left alone on a server
# would otherwise climb back to the batch by square roots, one round-trip each.
_QUIET_ROUNDS = 2
_QUIET_SHARE = 0.2


class ConcurrencyLimit(Protocol):
    """What the replica pool asks and tells a replica's limit."""

    @property
    def value(self) -> int: ...

    def on_answer(self, latency_s: float, completion_tokens: int, in_flight: int) -> None:
        """A call to the replica got an answer of `completion_tokens` after `latency_s`; `in_flight` were out."""
        ...


class FixedLimit:
    """The ceiling, always."""

    def __init__(self, ceiling: int) -> None:
        self.value = ceiling

    def on_answer(self, latency_s: float, completion_tokens: int, in_flight: int) -> None:
        pass


class SchedulerLimit:
    """From the replica's scheduler gauges: requests running in the batch, waiting for it, and KV cache in use."""

    def __init__(self, ceiling: int, *, initial: int = 16, queue_share: float = 0.25) -> None:
        self.ceiling = ceiling
        # Not the ceiling: every member of a consumer group that starts (or joins) at once would send its whole
        # ceiling before the first reading, 256 requests for four members on a 32-request batch, which took the
        # server 6 s to work off. Doubling per reading reaches any batch within a few readings.
        self.value = max(1, min(ceiling, initial))
        self.queue_share = queue_share
        self.capacity: float | None = None  # the batch size when requests last waited
        self._full: deque[float] = deque(maxlen=_CAPACITY_READINGS)

    def on_answer(self, latency_s: float, completion_tokens: int, in_flight: int) -> None:
        pass

    def queue(self) -> int:
        """Requests meant to wait at the server: a freed slot is refilled without a round trip to us."""
        return max(1, round(self.queue_share * self.capacity)) if self.capacity else 1

    def on_reading(self, running: float, waiting: float, kv_usage: float | None, in_flight: int) -> None:
        """One reading of the gauges, with this client's requests in flight to the replica at that moment."""
        if waiting > 0:
            # The largest batch of the last readings with requests waiting: one taken as a request leaves, before
            # a waiting one takes its place, shows a slot free that is not.
            self._full.append(running)
            self.capacity = max(self._full)
        queue = self.queue()
        # The gauges are the whole server's: every client of the replica (the other members of a consumer group)
        # reads the same excess or room. Each moves by its share of what the server holds, so that together they
        # move once; moving by all of it, N clients overshoot N times and the queue swings.
        share = min(1.0, in_flight / (running + waiting)) if running + waiting > 0 else 1.0
        if waiting > queue:
            self.value = min(self.value, in_flight) - math.ceil((waiting - queue) * share)
        elif waiting < queue and in_flight >= self.value - 1 and (kv_usage is None or kv_usage < 0.95):
            # The server's queue is short of its share and we are what holds the batch back: grow into our share
            # of the room the gauges show, or probe for it. A full queue means the batch has all it can take,
            # whatever a reading taken between two requests says of the running count.
            if self.capacity is None:
                self.value *= 2
            else:
                room = math.ceil(self.capacity - running) + queue - math.floor(waiting)
                self.value += max(1, math.ceil(room * share))
        self.value = max(1, min(self.ceiling, self.value))


class GradientLimit:
    """From latency (see the module docstring). Adjusted once per round: after `value` answers (at least
    `min_round`, so one round's mean is not one reply's length)."""

    def __init__(
        self,
        ceiling: int,
        *,
        initial: int = 8,
        tolerance: float = 1.15,
        min_round: int = 8,
        window_s: float = 60.0,
        probe_every_s: float = 20.0,
        answers_fitted: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.value = max(1, min(ceiling, initial))
        self.tolerance = tolerance
        self.min_round = min_round
        self.per_token = _PerToken(answers_fitted)
        self.window_s = window_s
        self.probe_every_s = probe_every_s
        self._rounds: deque[tuple[float, float, float]] = deque()  # (ended at, mean latency, mean tokens)
        self._rounds_ended = 0  # answers that came back in one round are fitted together (see _PerToken)
        self._latency = 0.0
        self._tokens = 0
        self._answers = 0
        self._saturated = False  # the limit was reached during this round
        self._slow_start = True  # doubling each round until latency exceeds the tolerance (again: see _QUIET_ROUNDS)
        self._quiet_rounds = 0
        self._clock = clock
        self._round_start = clock()  # answers to calls sent before it were sent under an older limit
        self._next_probe = self._round_start + probe_every_s

    def on_answer(self, latency_s: float, completion_tokens: int, in_flight: int) -> None:
        self.per_token.add(self._rounds_ended, completion_tokens, latency_s)
        now = self._clock()
        if now - latency_s < self._round_start:
            return  # sent before the last change: it waited behind what the old limit let out
        self._latency += latency_s
        self._tokens += completion_tokens
        self._answers += 1
        self._saturated |= in_flight >= self.value
        if self._answers >= max(self.value, self.min_round):
            self._adjust()

    def _adjust(self) -> None:
        """The round is in: cut by the ratio past the tolerance, else grow if the limit was reached; every
        `probe_every_s` one round at three quarters of the limit.

        Why a window and probes: a reference kept forever never follows a server that became slower for everyone
        (longer prompts, a busier host), and the limit cuts itself to 1 for good; a reference that follows the
        rounds it sees takes the small queue the limit keeps (or other consumers' queue) for the server's own
        latency, and creeps up to the ceiling. The window lets the reference rise within a minute; the probes,
        below the batch, keep the least of the window a latency without a queue."""
        now = self._clock()
        latency, tokens = self._latency / self._answers, self._tokens / self._answers
        self._rounds.append((now, latency, tokens))
        self._rounds_ended += 1
        while self._rounds[0][0] < now - self.window_s:
            self._rounds.popleft()
        ratio = self._ratio(latency, tokens)
        quiet = self._saturated and ratio <= 1 + _QUIET_SHARE * (self.tolerance - 1)
        self._quiet_rounds = self._quiet_rounds + 1 if quiet else 0
        if self._quiet_rounds >= _QUIET_ROUNDS:
            self._slow_start = True
        if ratio > self.tolerance:
            self._slow_start = False
            self.value = math.floor(self.value * max(0.5, self.tolerance / ratio))
        elif self._saturated and self.value < self.min_round:
            # A round is `min_round` answers however low the limit: one that saw no queue lets a whole round
            # out at once. Growing by its square root, a consumer cut to 1 while others shared the server (or
            # while it was busy with other work) took 20-25 s to fill it again once alone.
            self.value = self.min_round
        elif self._saturated:
            self.value = 2 * self.value if self._slow_start else self.value + math.ceil(math.sqrt(self.value))
        if not self._slow_start and now >= self._next_probe:
            self.value = math.floor(self.value * _PROBE_SHARE)
            self._next_probe = now + self.probe_every_s
        self.value = max(1, min(self.ceiling, self.value))
        self._latency, self._tokens, self._answers, self._saturated = 0.0, 0, 0, False
        self._round_start = now

    def _ratio(self, latency: float, tokens: float) -> float:
        """A round's mean latency over what its replies would have taken without a queue: their token time plus
        the least overhead (latency less token time) of the remembered rounds. Overheads are recomputed with the
        latest per-token time: the first rounds' fit rests on a few answers."""
        per_token = self.per_token.value()
        expected = min(lat - per_token * tok for _, lat, tok in self._rounds) + per_token * tokens
        return latency / expected if expected > 0 else 1.0


class _PerToken:
    """Seconds per completion token: the least-squares slope of latency on reply length over the recent answers,
    within the rounds they came back in. A queue adds the same wait to a short reply as to a long one at the same
    moment, but not at different moments: fitted across rounds, a queue that grew while the replies happened to
    get longer read as a steeper slope (a consumer among four fitted 4.1-5.7 ms a token on a 4 ms decoder, took its
    reference overhead 0.06-0.28 s on a 0.3 s server and cut itself to 2). Against each round's own means the
    queue cancels out."""

    def __init__(self, size: int) -> None:
        self._points: deque[tuple[int, int, float]] = deque(maxlen=size)  # (round, tokens, latency)

    def add(self, round_id: int, tokens: int, latency_s: float) -> None:
        self._points.append((round_id, tokens, latency_s))

    def value(self) -> float:
        groups: dict[int, list[tuple[int, float]]] = {}
        for round_id, tokens, latency_s in self._points:
            groups.setdefault(round_id, []).append((tokens, latency_s))
        spread = covariance = 0.0
        for points in groups.values():
            mean_tokens = sum(t for t, _ in points) / len(points)
            mean_latency = sum(lat for _, lat in points) / len(points)
            spread += sum((t - mean_tokens) ** 2 for t, _ in points)
            covariance += sum((t - mean_tokens) * (lat - mean_latency) for t, lat in points)
        if spread <= 1e-9:
            return 0.0  # replies all of one length: latency alone (the client counts a reply without usage)
        return max(0.0, covariance / spread)
