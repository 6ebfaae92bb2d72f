"""Client-side rate limiting: per-minute budgets held in one-second slices, served in priority order.

OpenAI states its limits per minute but enforces them in sub-minute slices, so a client that spends a whole
minute's budget in a burst is refused even though it is "within the limit". The limiter therefore keeps a
sliding one-second ledger of what it let through (one entry per request, with its token estimate) and admits a
call only when the last second's requests and tokens plus the new call stay within limit / 60. A sliding
window is at least as strict as any fixed one-second window a server might use, which a token bucket of the same
capacity is not (after an idle spell it lets through twice the slice in one server second).

Token estimates are reserved before a call and settled with what the call really cost afterwards, so the ledger
converges on the truth. A 429 puts the whole limiter into a shared cooldown: every waiting call backs off, not
only the one that was refused. Waiters are served strictly by (priority, arrival): a lower priority number first.
There is no polling: the head waiter sleeps on a timer set to the exact moment enough budget expires.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

_EPS = 1e-9
# Timers fire up to the loop's clock resolution early; count an entry as expired that close to its end.
_EXPIRY_SLACK_S = 1e-3


@dataclass(eq=False, slots=True)
class _Entry:
    at: float
    amount: float
    until: float  # when it leaves the window
    live: bool = True


class _SlidingBudget:
    """What was admitted during the last `window_s` seconds, against a capacity for that window.

    `capacity` is `full` (the configured limit's slice) times the limiter's current scale. Once the server's own
    window boundaries are known (`align`), the window is the server's: an entry stays until the boundary after
    it, and nothing is admitted in the last `guard_s` of a window (it could arrive in the next one)."""

    def __init__(self, full: float, window_s: float) -> None:
        self.full = full
        self.capacity = full
        self.window_s = window_s
        self.used = 0.0
        self.boundary: float | None = None  # one of the server's window boundaries (loop time)
        self.guard_s = 0.0
        self._entries: deque[_Entry] = deque()

    def _next_boundary(self, at: float) -> float:
        assert self.boundary is not None
        return self.boundary + math.floor((at - self.boundary) / self.window_s + 1.0) * self.window_s

    def admissible_at(self, now: float) -> float:
        """`now`, or the next window's start when `now` is in the guard band at the end of a server window."""
        if self.boundary is None:
            return now
        edge = self._next_boundary(now)
        return edge + _EXPIRY_SLACK_S if edge - now < self.guard_s else now

    def expire(self, now: float) -> None:
        while self._entries and self._entries[0].until <= now + _EXPIRY_SLACK_S:
            entry = self._entries.popleft()
            entry.live = False
            self.used -= entry.amount
        if not self._entries:
            self.used = 0.0  # no float drift once the window is empty

    def _need(self, amount: float) -> float:
        # A call larger than a whole slice could never fit: let it through alone, on an otherwise empty window.
        return min(amount, self.capacity)

    def ready_at(self, amount: float, now: float) -> float:
        """The earliest time at which `amount` fits, given what is in the window now."""
        need = self._need(amount)
        used = self.used
        if used + need <= self.capacity + _EPS:
            return now
        for entry in self._entries:
            used -= entry.amount
            if used + need <= self.capacity + _EPS:
                return entry.until
        return now  # unreachable while need <= capacity; kept total for safety

    def fits_beside(self, amount: float, later: float, later_at: float) -> bool:
        """Whether `amount` fits now and, still in the window at `later_at`, leaves room for `later` then."""
        if self.used + amount > self.capacity + _EPS:
            return False
        leaving = sum(e.amount for e in self._entries if e.until <= later_at + _EXPIRY_SLACK_S)
        return self.used - leaving + amount + self._need(later) <= self.capacity + _EPS

    def add(self, amount: float, now: float) -> _Entry:
        until = now + self.window_s if self.boundary is None else self._next_boundary(now)
        entry = _Entry(now, amount, until)
        self._entries.append(entry)
        self.used += amount
        return entry

    def adjust(self, entry: _Entry, amount: float) -> float:
        """Change an entry's amount (settling); returns the change. Expired entries no longer count."""
        if not entry.live:
            return 0.0
        delta = amount - entry.amount
        entry.amount = amount
        self.used += delta
        return delta


@dataclass(eq=False)
class Reservation:
    """Budget taken for one request; `settle()` replaces the token estimate by what the call really cost."""

    tokens: int
    _limiter: RateLimiter | None = None
    _entry: _Entry | None = None

    def settle(self, tokens: int) -> None:
        """Refund or charge the difference between the estimate and `tokens`."""
        if self._limiter is not None and self._entry is not None:
            self._limiter._adjust(self._entry, tokens)
        self.tokens = tokens

    def cancel(self) -> None:
        """Give back the whole reservation: for a request that never left this process."""
        if self._limiter is not None:
            self._limiter._cancel(self)


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    tokens: int = field(compare=False)
    future: asyncio.Future[Reservation] = field(compare=False)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute budgets enforced per `slice_s` (default one second).

    `headroom` (0 < h <= 1) scales both budgets for good: a static share of limits that several processes draw
    on. `scale` (0 < s <= 1, set by `consumers.llm.feedback`) scales them for now: the share of the limit that
    the server's answers say is free.
    """

    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        slice_s: float = 1.0,
        headroom: float = 1.0,
        max_cooldown_s: float = 120.0,
    ) -> None:
        if not 0.0 < headroom <= 1.0:
            raise ValueError("headroom must be in (0, 1]")
        self._slice_s = slice_s
        self._headroom = headroom
        self._requests = self._budget(requests_per_minute, slice_s, headroom)
        self._tokens = self._budget(tokens_per_minute, slice_s, headroom)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.scale = 1.0
        self._room: dict[str, float] = {}
        self._room_until = 0.0
        self._max_cooldown_s = max_cooldown_s
        self._cooldown_until = 0.0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @staticmethod
    def _budget(per_minute: int | None, slice_s: float, headroom: float) -> _SlidingBudget | None:
        if per_minute is None:
            return None
        # Below one request per slice, widen the window so that one whole request fits.
        window = max(slice_s, 60.0 / (per_minute * headroom))
        return _SlidingBudget(per_minute * headroom * window / 60.0, window)

    def set_limits(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        """Replace the per-minute limits (the server told different ones); what is in the window still counts."""
        for name, per_minute in (("_requests", requests_per_minute), ("_tokens", tokens_per_minute)):
            old: _SlidingBudget | None = getattr(self, name)
            new = self._budget(per_minute, self._slice_s, self._headroom)
            if old is not None and new is not None:
                new._entries, new.used = old._entries, old.used
                new.boundary, new.guard_s = old.boundary, old.guard_s
            setattr(self, name, new)
        self.requests_per_minute, self.tokens_per_minute = requests_per_minute, tokens_per_minute
        self.set_scale(self.scale)

    def set_scale(self, scale: float) -> None:
        """Use `scale` of the limits from now on; a larger scale admits waiters at once."""
        self.scale = min(1.0, max(0.01, scale))
        for budget in (self._requests, self._tokens):
            if budget is not None:
                budget.capacity = budget.full * self.scale
        if self._waiters:
            self._wake()

    @property
    def enabled(self) -> bool:
        return self._requests is not None or self._tokens is not None

    @property
    def waiting(self) -> int:
        """Calls queued for budget (cancelled ones may linger until they reach the head)."""
        return sum(not w.future.done() for w in self._waiters)

    def cooldown_left(self) -> float:
        return max(0.0, self._cooldown_until - asyncio.get_running_loop().time())

    def cool_down(self, seconds: float) -> None:
        """Stop admitting anything for `seconds` (capped): the server said every call would be refused."""
        if seconds > 0:
            self.hold_until(asyncio.get_running_loop().time() + min(seconds, self._max_cooldown_s))

    def align(self, boundary: float, window_s: float, guard_s: float) -> None:
        """Use the server's enforcement windows (`window_s` long, one ending at `boundary`, loop time) instead of
        sliding ones: calls then fill each server window exactly, and none is sent in its last `guard_s`."""
        for budget in (self._requests, self._tokens):
            if budget is not None and abs(budget.window_s - window_s) < 1e-6:
                budget.boundary, budget.guard_s = boundary, guard_s

    def report_room(self, room: dict[str, float], until: float) -> None:
        """What the server says is left of its current window (by dimension: "requests", "tokens"), until
        `until` (loop time). Calls that would not fit wait for the next window instead of earning a 429."""
        if until >= self._room_until:
            self._room_until = until
            self._room = dict(room)

    def _room_ready_at(self, tokens: int, now: float) -> float:
        if now >= self._room_until:
            return now
        need = {"requests": 1.0, "tokens": float(tokens)}
        if any(left < need[d] for d, left in self._room.items()):
            return self._room_until + _EXPIRY_SLACK_S
        return now

    def hold_until(self, until: float) -> None:
        """Admit nothing before `until` (loop time): the server says there is no room until then."""
        if until > self._cooldown_until:
            self._cooldown_until = until
            if self._waiters:
                self._wake()

    async def acquire(self, tokens: int, *, priority: int = 0) -> Reservation:
        """Wait until one request of `tokens` estimated tokens fits, then take it from the budget."""
        loop = asyncio.get_running_loop()
        if not self.enabled and not self._waiters and loop.time() >= self._cooldown_until:
            return Reservation(tokens)  # no limits, no cooldown: nothing to wait for
        waiter = _Waiter(priority, next(self._seq), tokens, loop.create_future())
        heapq.heappush(self._waiters, waiter)
        self._wake()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            # Admitted just before the cancellation landed: the request was never sent, so refund it.
            if waiter.future.done() and not waiter.future.cancelled():
                self._cancel(waiter.future.result())
            self._wake()
            raise

    def _ready_at(self, tokens: int, now: float) -> float:
        at = max(now, self._cooldown_until, self._room_ready_at(tokens, now))
        for budget in (self._requests, self._tokens):
            if budget is not None:
                at = max(at, budget.admissible_at(at))
        if self._requests is not None:
            self._requests.expire(now)
            at = max(at, self._requests.ready_at(1, now))
        if self._tokens is not None:
            self._tokens.expire(now)
            at = max(at, self._tokens.ready_at(tokens, now))
        return at

    def _admit(self, tokens: int, now: float) -> Reservation:
        if now < self._room_until:
            self._room = {d: left - (1 if d == "requests" else tokens) for d, left in self._room.items()}
        if self._requests is not None:
            self._requests.add(1, now)
            self._space_out(1, self._requests, now)
        entry = None
        if self._tokens is not None:
            entry = self._tokens.add(tokens, now)
            self._space_out(tokens, self._tokens, now)
        return Reservation(tokens, self, entry)

    def _space_out(self, amount: float, budget: _SlidingBudget, now: float) -> None:
        """A call larger than a whole window's budget went through alone: hold the next one back for as many
        windows as it is large, so that a small share of the limit stays small whatever the size of calls."""
        if amount > budget.capacity > 0:
            self._cooldown_until = max(self._cooldown_until, now + budget.window_s * (amount / budget.capacity - 1))

    def _wake(self) -> None:
        """Admit waiters from the head while they fit; otherwise sleep until the head can go."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():
                heapq.heappop(self._waiters)
                continue
            now = loop.time()
            at = self._ready_at(head.tokens, now)
            if at > now + _EXPIRY_SLACK_S:
                self._backfill(head, at, now)
                self._timer = loop.call_at(at, self._wake)
                return
            heapq.heappop(self._waiters)
            head.future.set_result(self._admit(head.tokens, now))

    def _backfill(self, head: _Waiter, head_at: float, now: float) -> None:
        """Let later waiters use slack that the head cannot, when doing so does not delay the head.

        A call admitted now is still in the window when the head's turn comes (windows are one slice long), so it
        may go only if the head would fit beside it then. The head keeps its time; big calls are never starved.
        """
        if now < self._cooldown_until:
            return
        if any(b is not None and b.admissible_at(now) > now for b in (self._requests, self._tokens)):
            return  # the end of a server window: nothing goes out now
        for waiter in sorted(self._waiters)[1:]:
            if self._requests is not None and not self._requests.fits_beside(1, 1, head_at):
                return  # every call needs a request slot: nobody else can go
            if waiter.future.done() or self._room_ready_at(waiter.tokens, now) > now:
                continue
            if self._tokens is None or self._tokens.fits_beside(waiter.tokens, head.tokens, head_at):
                waiter.future.set_result(self._admit(waiter.tokens, now))

    def _adjust(self, entry: _Entry, tokens: int) -> None:
        if self._tokens is not None and self._tokens.adjust(entry, tokens) < 0 and self._waiters:
            self._wake()

    def _cancel(self, reservation: Reservation) -> None:
        # The request slot stays spent (cheap, and a server may count it); the tokens come back.
        if reservation._entry is not None:
            self._adjust(reservation._entry, 0)
        reservation._limiter = None


class PriorityGate:
    """A semaphore whose waiters are served by (priority, arrival); slots are held with `async with`."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def free(self) -> int:
        return self._free

    @asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        # Free slots imply no live waiter: `_release` hands a slot to a waiter before it frees one.
        if self._free > 0:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot was handed over as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # hand the slot over directly: no window for a newcomer to jump in
                return
        self._free += 1
