"""Sharing one organisation's limit between processes that do not talk to each other, from the server's answers.

Every process is told the organisation's whole limit; together they would ask for N times it. The server's
answers are the only channel they share: `x-ratelimit-limit-*` (the real limit), `x-ratelimit-remaining-*` and
`x-ratelimit-reset-*` (what is left of the current enforcement window, and when it ends), and 429s (too much).
`LimitFeedback` feeds them to the process's `RateLimiter`:

- **Limits.** `x-ratelimit-limit-*` replace the configured limits when they differ, and supply them when none
  were given.
- **The server's windows.** A reset is at most one window long, so the window's length is the longest reset
  seen, in whole seconds; `sent_at + reset` dates the end of the current one (a little early, by the request's
  trip to the server: the latest of recent estimates is the best, less outliers). The limiter then fills the
  server's own windows rather than sliding ones that straddle them, and sends nothing in the first `lead` or the
  last `guard` of a window, where a request could arrive in the window before or after.
- **Room left.** What an answer says is left of the window (less what this process sent since) holds back any
  call that would not fit until the window ends: it would be refused.
- **Share (AIMD).** The limiter's `scale` starts at `initial_scale`, so N processes starting together do not open
  with a storm of 429s, and grows by `growth` per window (slow start) until the first 429, then by `increase` per
  window without one; a 429 multiplies it by `backoff` (once per window). Processes that back off alike and grow
  alike converge on equal shares whose sum hovers at the limit. A group member that takes whole windows in turn
  (`RateLimiter.set_share`) keeps its scale at 1: it needs no probing.

What this cannot do: a refused request is not charged, so demand that the server refused is invisible to the
others, and with calls a third of a window's token budget (WebR pages against 400k tokens per minute enforced
per second) uncoordinated processes collide; `docs/llm-client.md` has the measured trade-off. Kafka group
members know their share (their partitions) and take turns instead; for other processes where N is known,
`--rate-limit-share 1/N` is exact.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping

from consumers.llm.errors import parse_duration
from consumers.llm.ratelimit import RateLimiter

log = logging.getLogger("consumers.llm")

_DIMENSIONS = ("requests", "tokens")


class LimitFeedback:
    """Adapts a `RateLimiter` from response headers and 429s (see the module docstring)."""

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        initial_scale: float = 0.3,
        growth: float = 1.25,
        increase: float = 0.02,
        backoff: float = 0.7,
        guard: float = 0.05,
        lead: float = 0.05,
    ) -> None:
        self.limiter = limiter
        self.initial_scale = initial_scale
        self.growth = growth
        self.increase = increase
        self.backoff = backoff
        self.guard = guard
        self.lead = lead
        self.window_s = 1.0
        self._slow_start = True
        self._window_end: float | None = None
        self._ends: deque[float] = deque(maxlen=32)
        self._last_cut = -math.inf
        self._last_step = -math.inf
        self._bucket_semantics = False
        if limiter.enabled:
            limiter.set_scale(initial_scale)

    def on_answer(self, headers: Mapping[str, str] | None, sent_at: float, *, rate_limited: bool = False) -> None:
        """Every answer from the server, with its headers and the time (loop clock) its request was sent."""
        self.limiter.heard_from_server()
        h = {k.lower(): v for k, v in headers.items()} if headers else {}
        self._learn_limits(h, sent_at)
        if self.limiter.takes_turns:
            pass  # whole windows of its own: a 429 is a moment of overlap (a rebalance), not too large a share
        elif rate_limited:
            self._cut(sent_at)
        else:
            self._grow(sent_at)
        window = self._read_window(h, sent_at)
        if window is not None:
            end, room = window
            self._align(end)
            self.limiter.report_room(room, end)

    def _learn_limits(self, h: dict[str, str], now: float) -> None:
        """The server's limits replace ours; limits learnt where none were configured start at `initial_scale`,
        as configured ones do, unless the process has a known share (`RateLimiter.set_share`)."""
        told = {d: _int(h.get(f"x-ratelimit-limit-{d}")) for d in _DIMENSIONS}
        rpm = told["requests"] or self.limiter.requests_per_minute
        tpm = told["tokens"] or self.limiter.tokens_per_minute
        if (rpm, tpm) != (self.limiter.requests_per_minute, self.limiter.tokens_per_minute):
            log.info(
                "the server's limits are %s requests/min and %s tokens/min: using them",
                rpm,
                tpm,
                extra={"rpm": rpm, "tpm": tpm},
            )
            enabled = self.limiter.enabled
            self.limiter.set_limits(rpm, tpm)
            if not enabled and not self.limiter.has_share:
                self._set(self.initial_scale, now)

    def _read_window(self, h: dict[str, str], sent_at: float) -> tuple[float, dict[str, float]] | None:
        """(end of the server's current window, room left in it by dimension), or None without usable headers."""
        room: dict[str, float] = {}
        end = None
        for d in _DIMENSIONS:
            limit = _int(h.get(f"x-ratelimit-limit-{d}"))
            left = _int(h.get(f"x-ratelimit-remaining-{d}"))
            reset = parse_duration(h.get(f"x-ratelimit-reset-{d}"))
            if limit is None or left is None or reset is None:
                continue
            self.window_s = max(self.window_s, float(math.ceil(reset - 1e-3)))
            if left > limit * self.window_s / 60.0 * 1.05 + 1:
                # More left than one window allows: a per-minute bucket, not per-window slices. AIMD alone.
                if not self._bucket_semantics:
                    log.info("the server's limits refill as a bucket: adapting to 429s only")
                self._bucket_semantics = True
                return None
            room[d] = left
            end = sent_at + reset if end is None else max(end, sent_at + reset)
        return (end, room) if end is not None else None

    def _align(self, end: float) -> None:
        """Each answer dates a window's end a little early (by the request's way to the server); a request held
        up in this process (a busy event loop) dates it very early, and modulo the window that can read as late.
        The estimate is the upper envelope of the last answers' phases less the latest tenth of them."""
        w = self.window_s
        ref = end if self._window_end is None else self._window_end
        self._ends.append(end)
        phases = sorted((e - ref + w / 2) % w - w / 2 for e in self._ends)
        self._window_end = ref + phases[len(phases) - 1 - len(phases) // 10]
        self.limiter.align(self._window_end, w, self.guard * w, self.lead * w)

    def _cut(self, now: float) -> None:
        if now - self._last_cut < self.window_s:
            return
        self._last_cut = now
        self._slow_start = False
        self._set(self.limiter.scale * self.backoff, now)

    def _grow(self, now: float) -> None:
        if now - self._last_cut < self.window_s or now - self._last_step < self.window_s:
            return
        scale = self.limiter.scale
        self._set(scale * self.growth if self._slow_start else scale + self.increase, now)

    def _set(self, scale: float, now: float) -> None:
        self._last_step = now
        before = self.limiter.scale
        self.limiter.set_scale(scale)
        if self.limiter.scale != before:
            log.debug("rate limit scale %.3f -> %.3f", before, self.limiter.scale)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None
