"""A circuit breaker per endpoint: while the server is down, calls wait here instead of failing.

A stopped or restarting server fails every request in flight at once. Retrying each of them on its own backoff
would hammer the server the moment it comes back and, worse, give up on documents whose calls were already paid
for. The breaker opens after `threshold` consecutive transient failures (5xx, timeouts, refused connections);
while open, every attempt waits in `admit()` and only one probe goes out at a time, on an exponential schedule
(`probe_initial_s` doubling to `probe_max_s`). The probe's answer from the server, whatever its status, closes
the breaker: a 400 or a 429 still proves the endpoint is up, and the rate limiter takes it from there. Answers
to requests sent before the breaker opened prove nothing about now (a server going down finishes a few).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

log = logging.getLogger("consumers.llm")


@dataclass(slots=True)
class BreakerStats:
    """What the metrics exporter reads; only the breaker writes it."""

    open: bool = False
    opened: int = 0
    outage_s: float = 0.0  # summed over closed outages
    probes: int = 0


class CircuitBreaker:
    """Admission gate for one endpoint. Use `admit()` before an attempt and `record()` after it."""

    def __init__(
        self, endpoint: str, *, threshold: int = 3, probe_initial_s: float = 0.5, probe_max_s: float = 5.0
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.endpoint = endpoint
        self.threshold = threshold
        self.probe_initial_s = probe_initial_s
        self.probe_max_s = probe_max_s
        self.stats = BreakerStats()
        self._failures = 0
        self._opened_at = 0.0  # wall clock, for the outage's length
        self._probe_at = 0.0  # loop clock
        self._probe_wait = probe_initial_s
        self._probing = False
        self._changed = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self.stats.open

    async def admit(self) -> bool:
        """Wait until an attempt may go out; True when this attempt is the probe of an open breaker."""
        loop = asyncio.get_running_loop()
        while self.stats.open:
            now = loop.time()
            if not self._probing and now >= self._probe_at:
                self._probing = True
                self.stats.probes += 1
                return True
            changed = self._changed
            timeout = None if self._probing else self._probe_at - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        return False

    def record(self, *, probe: bool, down: bool | None) -> None:
        """The result of an attempt: `down` True for a transient failure, False for any answer from the server,
        None when the attempt never reached a verdict (cancelled): a probe then hands its turn on."""
        if probe:
            self._probing = False
        if down is None:
            if probe:
                self._notify()
            return
        if not down:
            self._failures = 0
            if probe and self.stats.open:
                self._close()
            return
        self._failures += 1
        if self.stats.open:
            if probe:
                self._schedule_probe(backoff=True)
        elif self._failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.stats.open = True
        self.stats.opened += 1
        self._opened_at = time.monotonic()
        self._probe_wait = self.probe_initial_s
        self._schedule_probe(backoff=False)
        log.warning(
            "llm endpoint %s is failing (%d transient failures in a row): holding new calls, probing",
            self.endpoint,
            self._failures,
            extra={"endpoint": self.endpoint, "breaker": "open"},
        )

    def _close(self) -> None:
        outage = time.monotonic() - self._opened_at
        self.stats.open = False
        self.stats.outage_s += outage
        log.warning(
            "llm endpoint %s answers again after %.1fs: resuming",
            self.endpoint,
            outage,
            extra={"endpoint": self.endpoint, "breaker": "closed", "outage_s": round(outage, 3)},
        )
        self._notify()

    def _schedule_probe(self, *, backoff: bool) -> None:
        if backoff:
            self._probe_wait = min(self.probe_max_s, self._probe_wait * 2)
        self._probe_at = asyncio.get_running_loop().time() + self._probe_wait
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
