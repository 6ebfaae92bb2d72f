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
  the first queue is seen, then by its square root).
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

    def __init__(self, ceiling: int, *, initial: int | None = None, queue_share: float = 0.25) -> None:
        self.ceiling = ceiling
        self.value = min(ceiling, initial or ceiling)
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
        if waiting > queue:
            # Half the excess: other clients of the same replica see it too and cut their share as well.
            self.value = min(self.value, in_flight) - math.ceil((waiting - queue) / 2)
        elif waiting < queue and in_flight >= self.value - 1 and (kv_usage is None or kv_usage < 0.95):
            # The server's queue is short of its share and we are what holds the batch back: grow into the room
            # the gauges show, or probe for it. A full queue means the batch has all it can take, whatever a
            # reading taken between two requests says of the running count.
            if self.capacity is None:
                self.value = math.ceil(self.value * 1.5)
            else:
                self.value += max(1, math.ceil(self.capacity - running) + queue - math.floor(waiting))
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
        self._latency = 0.0
        self._tokens = 0
        self._answers = 0
        self._saturated = False  # the limit was reached during this round
        self._slow_start = True  # doubling each round until latency first exceeds the tolerance
        self._clock = clock
        self._round_start = clock()  # answers to calls sent before it were sent under an older limit
        self._next_probe = self._round_start + probe_every_s

    def on_answer(self, latency_s: float, completion_tokens: int, in_flight: int) -> None:
        self.per_token.add(completion_tokens, latency_s)
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
        while self._rounds[0][0] < now - self.window_s:
            self._rounds.popleft()
        ratio = self._ratio(latency, tokens)
        if ratio > self.tolerance:
            self._slow_start = False
            self.value = math.floor(self.value * max(0.5, self.tolerance / ratio))
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
    """Seconds per completion token: the least-squares slope of latency on reply length over the recent answers.
    A queue adds the same wait to a short reply as to a long one, so the slope is the decoder's, queue or not."""

    def __init__(self, size: int) -> None:
        self._points: deque[tuple[int, float]] = deque()
        self._size = size
        self._n = self._nn = self._l = self._nl = 0.0

    def add(self, tokens: int, latency_s: float) -> None:
        self._points.append((tokens, latency_s))
        self._move(tokens, latency_s, 1)
        if len(self._points) > self._size:
            self._move(*self._points.popleft(), -1)

    def _move(self, tokens: int, latency_s: float, sign: int) -> None:
        self._n += sign * tokens
        self._nn += sign * tokens * tokens
        self._l += sign * latency_s
        self._nl += sign * tokens * latency_s

    def value(self) -> float:
        count = len(self._points)
        spread = count * self._nn - self._n * self._n
        if count < 2 or spread <= 1e-9 * max(1.0, self._nn):
            return 0.0  # replies all of one length (or no usage reported): latency alone
        return max(0.0, (count * self._nl - self._n * self._l) / spread)
