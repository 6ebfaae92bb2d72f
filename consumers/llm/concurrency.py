"""How many requests one replica gets at once: enough to keep its batch full, not so many that they queue there.

A vLLM server runs a bounded batch; requests beyond it wait in the server's queue, in arrival order, where this
client's priorities (a started document's next call first, the longest chains at the end of a run) no longer
apply and where a call cannot move to another, idle replica. So the limit is what the batch holds plus a small
queue that refills a freed slot at once:

- `SchedulerLimit`, where the server exposes vLLM's scheduler gauges on `/metrics`: fewer when requests wait there
  beyond the small queue, more when fewer than the queue wait, the batch runs below the size it reached when
  requests last waited, and the KV cache has room.
- `GradientLimit` otherwise, from latency alone (after Netflix's concurrency-limits gradient2): the latest round
  of answers' latency against the replica's no-load latency, per step of the chain (steps differ in length);
  latency that grows past `tolerance` means requests queue, and the limit shrinks by the ratio.
- `FixedLimit` for servers whose rate limits decide what goes out (OpenAI): the configured concurrency.

Every limit stays within 1 and the ceiling (`--max-concurrency`, which also bounds the sum over replicas).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

# Readings with requests waiting that the batch's capacity is the largest of (the batch may shrink when the KV
# cache binds: long prompts leave room for fewer sequences).
_CAPACITY_READINGS = 20


class ConcurrencyLimit(Protocol):
    """What the replica pool asks and tells a replica's limit."""

    @property
    def value(self) -> int: ...

    def on_answer(self, latency_s: float, step: str, in_flight: int) -> None:
        """A call to the replica got an answer after `latency_s`; `in_flight` were out at the time."""
        ...


class FixedLimit:
    """The ceiling, always."""

    def __init__(self, ceiling: int) -> None:
        self.value = ceiling

    def on_answer(self, latency_s: float, step: str, in_flight: int) -> None:
        pass


class SchedulerLimit:
    """From the replica's scheduler gauges: requests running in the batch, waiting for it, and KV cache in use."""

    def __init__(self, ceiling: int, *, initial: int | None = None, queue_share: float = 0.25) -> None:
        self.ceiling = ceiling
        self.value = min(ceiling, initial or ceiling)
        self.queue_share = queue_share
        self.capacity: float | None = None  # the batch size when requests last waited
        self._full: deque[float] = deque(maxlen=_CAPACITY_READINGS)

    def on_answer(self, latency_s: float, step: str, in_flight: int) -> None:
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
    """From latency (see the module docstring). Adjusted once per round: after `value` answers."""

    def __init__(
        self, ceiling: int, *, initial: int = 8, tolerance: float = 1.15, fast: float = 0.1, slow: float = 0.01
    ) -> None:
        self.ceiling = ceiling
        self.value = max(1, min(ceiling, initial))
        self.tolerance = tolerance
        self.fast = fast
        self.slow = slow
        self._no_load: dict[str, float] = {}  # per step: a low envelope of its latency
        self._ratios = 0.0
        self._answers = 0
        self._saturated = False  # the limit was reached during this round

    def on_answer(self, latency_s: float, step: str, in_flight: int) -> None:
        base = self._no_load.get(step, latency_s)
        # The latency of the replica without a queue: follows drops at once; rises slowly, and only from answers
        # to calls sent while at most half the limit was out (a full limit's queue would pass for no load).
        if latency_s < base:
            self._no_load[step] = base + self.fast * (latency_s - base)
        elif in_flight <= max(1, self.value // 2):
            self._no_load[step] = base + self.slow * (latency_s - base)
        else:
            self._no_load[step] = base
        self._ratios += latency_s / max(base, 1e-6)
        self._answers += 1
        self._saturated |= in_flight >= self.value
        if self._answers >= self.value:
            self._adjust(self._ratios / self._answers)

    def _adjust(self, ratio: float) -> None:
        gradient = max(0.5, min(1.0, self.tolerance / ratio))
        grow = math.ceil(math.sqrt(self.value)) if self._saturated and gradient >= 1.0 else 0
        self.value = max(1, min(self.ceiling, math.floor(self.value * gradient) + grow))
        self._ratios, self._answers, self._saturated = 0.0, 0, False
