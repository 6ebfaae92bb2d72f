"""Client-side rate limiting: per-minute budgets held in one-second slices, served in priority order.

OpenAI states its limits per minute but enforces them in sub-minute slices, so a client that spends a whole
minute's budget in a burst is refused even though it is "within the limit". The limiter therefore keeps a
sliding one-second ledger of what it let through (one entry per request, with its token estimate) and admits a
call only when the last second's requests and tokens plus the new call stay within limit / 60. A sliding
window is at least as strict as any fixed one-second window a server might use, which a token bucket of the same
capacity is not (after an idle spell it lets through twice the slice in one server second).

Token estimates are reserved before a call and settled with what the call really cost afterwards, so the ledger
converges on the truth. A 429 puts the whole limiter into a shared cooldown: every waiting call backs off, not
only the one that was refused. The head waiter, by (priority, arrival) (`types.QueuedCall`), goes first; the room
it leaves goes to the waiters that fill it best. There is no polling: the head sleeps on a timer set to the moment
enough budget expires. Members of a group that know their share (`set_share`) take the server's windows in turn.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from consumers.llm.types import QueuedCall, drain_queue

log = logging.getLogger("consumers.llm")
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
        self.lead_s = 0.0
        self._entries: deque[_Entry] = deque()

    def _next_boundary(self, at: float) -> float:
        assert self.boundary is not None
        return self.boundary + math.floor((at - self.boundary) / self.window_s + 1.0) * self.window_s

    def admissible_at(self, now: float) -> float:
        """`now`, or later when `now` is in the guard bands at the start or end of a server window."""
        if self.boundary is None:
            return now
        edge = self._next_boundary(now)
        if edge - now < self.guard_s:
            return edge + self.lead_s + _EXPIRY_SLACK_S
        start = edge - self.window_s
        return start + self.lead_s + _EXPIRY_SLACK_S if now - start < self.lead_s else now

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

    def room_beside(self, later: float, later_at: float, now: float) -> float:
        """How much may be admitted now and still leave room for `later` at `later_at`.

        What is admitted now stays until the window's end: if that is after `later_at`, it counts against
        `later` then, beside what is still in the window at that time."""
        room = self.capacity - self.used
        if self._until(now) <= later_at:
            return room  # gone by then
        leaving = sum(e.amount for e in self._entries if e.until <= later_at + _EXPIRY_SLACK_S)
        return min(room, self.capacity - (self.used - leaving) - self._need(later))

    def _until(self, now: float) -> float:
        return now + self.window_s if self.boundary is None else self._next_boundary(now)

    def window_start(self, at: float) -> float:
        """The start of the server window holding `at` (aligned budgets only)."""
        return self._next_boundary(at) - self.window_s

    def add(self, amount: float, now: float) -> _Entry:
        entry = _Entry(now, amount, self._until(now))
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


@dataclass(order=True, slots=True)
class _Waiter(QueuedCall[Reservation]):
    tokens: int = field(default=0, compare=False)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute budgets enforced per `slice_s` (default one second).

    `headroom` (0 < h <= 1) scales both budgets for good: a static share of limits that several processes draw
    on, for processes outside a Kafka group; while a share is set (`set_share`) it is ignored, since the
    partitions already divide the whole limit among the members. `scale` (0 < s <= 1, set by
    `consumers.llm.feedback`) scales them for now: the share of the limit that the server's answers say is free.
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
        self._turns: tuple[frozenset[int], int] | None = None
        self._warned_headroom = False
        self._heard = False  # whether the server has answered anything yet
        self._probe_at = -math.inf  # when the last call went out while a member waits for its first answer
        self._wall_offset = time.time() - time.monotonic()  # the loop's clock is time.monotonic()
        self._room: dict[str, float] = {}
        self._room_until = 0.0
        self._max_cooldown_s = max_cooldown_s
        self._cooldown_until = 0.0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._draining = False
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
        headroom = 1.0 if self._turns is not None else self._headroom
        for name, per_minute in (("_requests", requests_per_minute), ("_tokens", tokens_per_minute)):
            old: _SlidingBudget | None = getattr(self, name)
            new = self._budget(per_minute, self._slice_s, headroom)
            if old is not None and new is not None:
                new._entries, new.used = old._entries, old.used
                new.boundary, new.guard_s, new.lead_s = old.boundary, old.guard_s, old.lead_s
            setattr(self, name, new)
        self.requests_per_minute, self.tokens_per_minute = requests_per_minute, tokens_per_minute
        self.set_scale(self.scale)

    def set_scale(self, scale: float) -> None:
        """Use `scale` of the limits from now on; a larger scale admits waiters at once."""
        self.scale = min(1.0, max(0.01, scale))
        share = 1.0 if self._turns is None or self.takes_turns else len(self._turns[0]) / self._turns[1]
        for budget in (self._requests, self._tokens):
            if budget is not None:
                budget.capacity = budget.full * self.scale * share
        if self._waiters:
            self._wake()

    def set_share(self, owned: Collection[int], total: int) -> None:
        """This process owns `owned` of `total` equal shares of the limits (a group member's partitions).

        Once the server's windows are known (`align`), the members take turns: this one sends only in the
        windows whose number (counted on the wall clock, which all members share) modulo `total` is in `owned`,
        and has each of them whole, so no two members ever charge one window. Before that, and where the
        server refills a per-minute bucket, it uses len(owned) / total of the limits, and until the server's
        first answer it sends one call a window (members starting together would otherwise collide before any
        answer dates the windows). The shares are of the whole limit: a fixed `headroom` would cut the member's
        share a second time, so it is ignored while a share is set. The adaptive scale starts over at 1: a known
        share needs no probing. Nothing owned: back to sharing by the server's answers alone.
        """
        turns = frozenset(p % total for p in owned) if total > 0 else frozenset()
        if turns and self._headroom < 1.0 and not self._warned_headroom:
            self._warned_headroom = True
            log.warning(
                "ignoring the fixed rate-limit share %.3g: group members share the limit by their partitions",
                self._headroom,
            )
        self._turns = (turns, total) if turns else None
        self.set_limits(self.requests_per_minute, self.tokens_per_minute)  # with or without the fixed share
        self.set_scale(1.0)

    def heard_from_server(self) -> None:
        """The server answered (whatever it said): a member no longer waits for its first answer."""
        if not self._heard:
            self._heard = True
            if self._waiters:
                self._wake()

    @property
    def has_share(self) -> bool:
        """Whether this process was told its share of the limits (`set_share`)."""
        return self._turns is not None

    @property
    def takes_turns(self) -> bool:
        """Whether this process sends only in its own server windows (a share is set and the windows known)."""
        return self._turns is not None and self._aligned() is not None

    def _aligned(self) -> _SlidingBudget | None:
        return next((b for b in (self._tokens, self._requests) if b is not None and b.boundary is not None), None)

    def _turn_at(self, at: float) -> float:
        """`at` if it falls in one of this process's windows, else the start of its next one."""
        budget = self._aligned()
        if self._turns is None or budget is None:
            return at
        owned, total = self._turns
        start, w = budget.window_start(at), budget.window_s
        for k in range(total):
            if round((start + k * w + self._wall_offset) / w) % total in owned:
                return at if k == 0 else start + k * w + _EXPIRY_SLACK_S
        return at  # unreachable: `owned` is never empty

    def _open_at(self, at: float) -> float:
        """The first moment from `at` that is in this process's turn and not in a window's closing guard band."""
        for _ in range(4):
            nxt = self._turn_at(at)
            for budget in (self._requests, self._tokens):
                if budget is not None:
                    nxt = max(nxt, budget.admissible_at(nxt))
            if nxt == at:
                break
            at = nxt
        return at

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

    def align(self, boundary: float, window_s: float, guard_s: float, lead_s: float = 0.0) -> None:
        """Use the server's enforcement windows (`window_s` long, one ending at `boundary`, loop time) instead of
        sliding ones: calls then fill each server window exactly, and none is sent in its first `lead_s` or last
        `guard_s`, where it could arrive in the window before or after."""
        for budget in (self._requests, self._tokens):
            if budget is not None and abs(budget.window_s - window_s) < 1e-6:
                budget.boundary, budget.guard_s, budget.lead_s = boundary, guard_s, lead_s
        if self._turns is not None:
            self.set_scale(1.0)  # whole windows in turn instead of a fraction of each

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

    def drain(self) -> None:
        """No more chains will start: the calls with the most calls left go first, those waiting now included."""
        self._draining = True
        drain_queue(self._waiters)

    async def acquire(self, tokens: int, *, priority: int = 0, calls_left: int = 1) -> Reservation:
        """Wait until one request of `tokens` estimated tokens fits, then take it from the budget."""
        loop = asyncio.get_running_loop()
        if not self.enabled and not self._waiters and loop.time() >= self._cooldown_until:
            return Reservation(tokens)  # no limits, no cooldown: nothing to wait for
        waiter = _Waiter(priority, calls_left, next(self._seq), loop.create_future(), tokens)
        if self._draining:
            waiter.drain()
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
        at = self._open_at(max(now, self._cooldown_until, self._room_ready_at(tokens, now), self._first_answer_at()))
        if self._requests is not None:
            self._requests.expire(now)
            at = max(at, self._requests.ready_at(1, now))
        if self._tokens is not None:
            self._tokens.expire(now)
            at = max(at, self._tokens.ready_at(tokens, now))
        return at

    def _first_answer_at(self) -> float:
        if self._turns is None or self._heard:
            return -math.inf
        budget = self._tokens or self._requests
        return self._probe_at + (budget.window_s if budget is not None else self._slice_s)

    def _admit(self, tokens: int, now: float) -> Reservation:
        self._probe_at = now
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
        """Admit the head when it fits, and beside it the waiters that fill the room best; otherwise sleep until
        the head can go."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        admitted_head = False
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():
                heapq.heappop(self._waiters)
                continue
            now = loop.time()
            at = self._ready_at(head.tokens, now)
            if at > now + _EXPIRY_SLACK_S:
                self._fill(now, head, at)
                self._timer = loop.call_at(at, self._wake)
                return
            if admitted_head and self._fill(now):
                continue  # the next head fitted too: the room went to the best fill instead of to arrival order
            heapq.heappop(self._waiters)
            head.future.set_result(self._admit(head.tokens, now))
            admitted_head = True

    def _fill(self, now: float, head: _Waiter | None = None, head_at: float = 0.0) -> int:
        """Admit the waiters that best fill the room left now (earlier ones preferred among equal fills); with a
        `head` that must wait until `head_at`, only others, and only as much as leaves the head its room then.

        WebR calls are a large part of a one-second budget (1,600 to 3,000 tokens of 6,667 at 400k a minute), so
        which ones share a window decides how full it gets; admitting by arrival alone left 10-15% of most
        windows unused. The head keeps its time, so big calls are never starved. Returns how many went.
        """
        if now < max(self._cooldown_until, self._first_answer_at()) or self._open_at(now) > now:
            return 0  # a cooldown, another member's window, or the end of a server window: nothing goes out now
        candidates = [w for w in sorted(self._waiters) if not w.future.done() and w is not head]
        slots = float(len(candidates))
        token_room = math.inf
        for budget, later in ((self._requests, 1.0), (self._tokens, float(head.tokens if head else 0))):
            if budget is None:
                continue
            room = budget.capacity - budget.used if head is None else budget.room_beside(later, head_at, now)
            if budget is self._requests:
                slots = min(slots, room)
            else:
                token_room = room
        if now < self._room_until:
            slots = min(slots, self._room.get("requests", math.inf))
            token_room = min(token_room, self._room.get("tokens", math.inf))
        chosen = _pack(candidates, token_room, math.floor(slots + _EPS))
        for waiter in chosen:
            waiter.future.set_result(self._admit(waiter.tokens, now))
        return len(chosen)

    def _adjust(self, entry: _Entry, tokens: int) -> None:
        if self._tokens is not None and self._tokens.adjust(entry, tokens) < 0 and self._waiters:
            self._wake()

    def _cancel(self, reservation: Reservation) -> None:
        # The request slot stays spent (cheap, and a server may count it); the tokens come back.
        if reservation._entry is not None:
            self._adjust(reservation._entry, 0)
        reservation._limiter = None


def _pack(candidates: list[_Waiter], room: float, slots: int) -> list[_Waiter]:
    """At most `slots` of `candidates` (in priority order) whose tokens fill `room` best: a subset sum over
    Python integers as bit sets. Among subsets of the best fill, the one without the latest candidates."""
    if slots <= 0:
        return []
    if math.isinf(room):
        return candidates[:slots]
    cap = math.floor(room + _EPS)
    fit = [w for w in candidates if 0 < w.tokens <= cap]
    if cap <= 0 or not fit:
        return []
    within = (1 << (cap + 1)) - 1
    reachable = [1]  # reachable[i]: bit s set when some subset of fit[:i] sums to s
    for waiter in fit:
        reachable.append((reachable[-1] | reachable[-1] << waiter.tokens) & within)
    total = reachable[-1].bit_length() - 1
    chosen = []
    for i in range(len(fit), 0, -1):
        if not reachable[i - 1] >> total & 1:  # fit[:i-1] cannot make `total`: fit[i-1] is in
            chosen.append(fit[i - 1])
            total -= fit[i - 1].tokens
    return chosen[::-1][:slots]
