"""A circuit breaker per endpoint: a replica that keeps failing is taken out of rotation until it answers again.

A stopped or restarting server fails every request in flight at once. Retrying each of them against it on its own
backoff would hammer the server the moment it comes back and, worse, give up on documents whose calls were already
paid for. The breaker opens after `threshold` consecutive transient failures (5xx, timeouts, refused connections);
while open, the replica pool (`consumers.llm.replicas`) sends it no call: calls go to the other replicas, or wait
when every replica is out. Health checks (a GET of the API's model list, see the pool) go out on an exponential
schedule (`probe_initial_s` doubling to `probe_max_s`); any answer below 500 readmits the replica on trial: it
takes one call at a time until a call succeeds, and a transient failure on trial opens the breaker again at once
(the health-check interval keeps doubling, so a server that answers health checks but fails its calls is tried
less and less often). Answers to requests sent before the breaker last opened prove nothing about now (a server going
down finishes a few, or times them out late): they change nothing, neither while it is open nor on trial. A call
tags its result with `stats.opened` as it was when the call was placed.
"""

from __future__ import annotations

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
    """Health of one endpoint from its calls' results (`record`) and its health checks (`probed`)."""

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
        self.trial = False  # readmitted by a health check; no call has succeeded since
        self.probe_wait = probe_initial_s  # until the next health check, while open
        self._failures = 0
        self._opened_at = 0.0

    @property
    def is_open(self) -> bool:
        return self.stats.open

    def record(self, *, down: bool, opened: int) -> bool:
        """The result of a call placed when the breaker had opened `opened` times: `down` True for a transient
        failure, False for any answer from the server. Returns True when this result opened the breaker."""
        if self.stats.open or opened != self.stats.opened:
            return False
        if not down:
            self._failures = 0
            if self.trial:
                self.trial = False
                self.probe_wait = self.probe_initial_s
            return False
        self._failures += 1
        if self.trial or self._failures >= self.threshold:
            self._open()
            return True
        return False

    def probed(self, *, up: bool) -> None:
        """The result of a health check of the open breaker: `up` readmits the endpoint on trial."""
        self.stats.probes += 1
        if not up:
            self.probe_wait = min(self.probe_max_s, self.probe_wait * 2)
            return
        outage = time.monotonic() - self._opened_at
        self.stats.open = False
        self.stats.outage_s += outage
        self.trial = True
        self._failures = 0
        log.warning(
            "llm endpoint %s answers again after %.1fs: back in rotation",
            self.endpoint,
            outage,
            extra={"endpoint": self.endpoint, "breaker": "closed", "outage_s": round(outage, 3)},
        )

    def _open(self) -> None:
        self.stats.open = True
        self.stats.opened += 1
        self._opened_at = time.monotonic()
        if self.trial:  # failed again right after a health check: wait longer before the next one
            self.probe_wait = min(self.probe_max_s, self.probe_wait * 2)
        self.trial = False
        log.warning(
            "llm endpoint %s is failing (%d transient failures in a row): out of rotation, checking its health",
            self.endpoint,
            self._failures,
            extra={"endpoint": self.endpoint, "breaker": "open"},
        )
