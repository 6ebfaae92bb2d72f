"""Sharing one organisation's limit between processes that do not talk to each other, from the server's headers.

Every process is told the organisation's whole limit; together they would ask for N times it. The server's
answers say what the group really spends: `x-ratelimit-limit-*` (the real limit), `x-ratelimit-remaining-*`
and `x-ratelimit-reset-*` (what is left of the current enforcement window, and when it ends), 429s (too much).
`LimitFeedback` turns them into the limiter's `scale`:

- The window's length is the longest reset seen (a whole second for per-second enforcement). At the end of each
  server window, the last answer from it gives the group's fill of the window, projected over its whole length,
  and the limiter's own admissions give this process's part of it.
- Alone (the others' part is negligible), the process may use the whole limit. With others, every process scales
  by target / fill: they all see the same fill, so the group converges on `target` in a few windows whatever
  their number, without anyone knowing it. A step is at most x2 or x0.5; a step down is taken half-way.
- A 429 cuts the scale by `backoff` (once per window): the fill cannot show demand the server refused.
- A process starts at `initial_scale` and grows from there, so N processes starting together do not open with a
  storm of 429s. Without usable headers (no limit headers, or per-minute bucket semantics where the remaining
  budget is far above one window's), the scale grows by `growth` per window without a 429: AIMD on 429s alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from consumers.llm.errors import parse_duration
from consumers.llm.ratelimit import RateLimiter

log = logging.getLogger("consumers.llm")

_DIMENSIONS = ("requests", "tokens")


@dataclass(slots=True)
class _Sample:
    """The latest answer seen from one server window."""

    end: float  # loop time at which the server's window ends
    at: float  # loop time of the answer
    remaining: dict[str, float]
    limits: dict[str, int]


class LimitFeedback:
    """Adapts `limiter.scale` from response headers and 429s (see the module docstring)."""

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        target: float = 0.96,
        initial_scale: float = 0.3,
        backoff: float = 0.7,
        growth: float = 1.25,
        alone_below: float = 0.03,
        min_elapsed: float = 0.3,
    ) -> None:
        self.limiter = limiter
        self.target = target
        self.backoff = backoff
        self.growth = growth
        self.alone_below = alone_below
        self.min_elapsed = min_elapsed
        self.window_s = 0.0
        self._sample: _Sample | None = None
        self._last_cut = -math.inf
        self._last_step = -math.inf
        self._headers_usable = True
        if limiter.enabled:
            limiter.set_scale(initial_scale)

    def on_answer(self, headers: Mapping[str, str] | None, now: float, *, rate_limited: bool = False) -> None:
        """Every answer from the server, with its headers; `rate_limited` for a 429."""
        h = {k.lower(): v for k, v in headers.items()} if headers else {}
        self._learn_limits(h)
        if rate_limited:
            self._cut(now)
        sample = self._read(h, now)
        if sample is None or not self._headers_usable:
            self._grow_blind(now)
            return
        last = self._sample
        if last is not None and sample.end > last.end + 0.5 * self.window_s:
            self._window_closed(last)
        self._sample = sample

    def _learn_limits(self, h: dict[str, str]) -> None:
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
            first = not self.limiter.enabled
            self.limiter.set_limits(rpm, tpm)
            if first:
                self.limiter.set_scale(self.limiter.scale)

    def _read(self, h: dict[str, str], now: float) -> _Sample | None:
        remaining: dict[str, float] = {}
        limits: dict[str, int] = {}
        end = None
        for d in _DIMENSIONS:
            limit = _int(h.get(f"x-ratelimit-limit-{d}"))
            left = _int(h.get(f"x-ratelimit-remaining-{d}"))
            reset = parse_duration(h.get(f"x-ratelimit-reset-{d}"))
            if limit is None or left is None or reset is None:
                continue
            self.window_s = max(self.window_s, _whole_seconds(reset))
            if left > limit * self.window_s / 60.0 * 1.05 + 1:
                # More left than one window allows: the limit is a per-minute bucket, not per-window slices.
                self._headers_usable = False
                return None
            remaining[d], limits[d] = left, limit
            end = now + reset if end is None else max(end, now + reset)
        return _Sample(end, now, remaining, limits) if end is not None else None

    def _window_closed(self, s: _Sample) -> None:
        """The last answer of a finished window: the group's fill against this process's part of it."""
        start = s.end - self.window_s
        elapsed = s.at - start
        if elapsed < self.min_elapsed * self.window_s:
            return
        own_requests, own_tokens = self.limiter.admitted_since(start)
        own = {"requests": own_requests, "tokens": own_tokens}
        fill = own_fill = 0.0
        for d, left in s.remaining.items():
            budget = s.limits[d] * self.window_s / 60.0
            used = max(0.0, budget - left)
            dim_fill = used / budget * self.window_s / elapsed
            if dim_fill >= fill:
                fill, own_fill = dim_fill, min(used, own[d]) / budget * self.window_s / elapsed
        if fill <= 0.0:
            return
        scale = self.limiter.scale
        desired = 1.0 if fill - own_fill <= self.alone_below else scale * self.target / fill
        desired = min(2.0 * scale, max(0.5 * scale, desired))
        # Up at once (every process sees the same fill, so the group lands on target); down half-way, smoothly.
        self._set(desired if desired >= scale else math.sqrt(scale * desired), s.end)

    def _cut(self, now: float) -> None:
        if now - self._last_cut < max(self.window_s, 1.0):
            return
        self._last_cut = now
        self._set(self.limiter.scale * self.backoff, now)

    def _grow_blind(self, now: float) -> None:
        step = max(self.window_s, 1.0)
        if now - self._last_cut >= step and now - self._last_step >= step:
            self._set(self.limiter.scale * self.growth, now)

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


def _whole_seconds(seconds: float) -> float:
    """Enforcement windows are whole seconds (or minutes); a reset is at most one window long."""
    return float(max(1, math.ceil(seconds - 1e-3)))
