"""An in-order completion window: documents finish in any order, outcomes leave in source order.

Emitting in offset order is what makes dedup decisions reproducible, output files contiguous offset ranges,
and the committable Kafka offset simply "the end of the last emitted outcome". The window bounds both the
documents still running and those finished but waiting behind a slow head, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any

from core.outcomes import Outcome


class OrderedWindow:
    """Documents in flight for one partition, keyed by offset, in the order they were pushed."""

    def __init__(self, max_running: int, max_buffered: int | None = None) -> None:
        if max_running <= 0:
            raise ValueError("max_running must be positive")
        self.max_running = max_running
        self.max_buffered = max_buffered if max_buffered is not None else 4 * max_running
        self._items: deque[tuple[int, asyncio.Future[Outcome]]] = deque()
        self._running = 0
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def running(self) -> int:
        return self._running

    @property
    def has_room(self) -> bool:
        return self._running < self.max_running and len(self._items) < self.max_buffered

    def push(self, offset: int, work: Coroutine[Any, Any, Outcome] | Outcome) -> None:
        """Start `work` (or record an outcome that needs none, such as an invalid record)."""
        if self._items and offset <= self._items[-1][0]:
            if isinstance(work, Coroutine):
                work.close()
            raise ValueError(f"offset {offset} pushed after {self._items[-1][0]}")
        if isinstance(work, Coroutine):
            task = asyncio.ensure_future(work)
            self._running += 1
            task.add_done_callback(self._on_done)
            self._items.append((offset, task))
        else:
            done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            done.set_result(work)
            self._items.append((offset, done))
            self._changed.set()

    def _on_done(self, _: asyncio.Future[Outcome]) -> None:
        self._running -= 1
        self._changed.set()

    def pop_ready(self) -> list[tuple[int, Outcome]]:
        """Remove and return the finished outcomes at the head, in offset order (raises a task's bug)."""
        ready: list[tuple[int, Outcome]] = []
        while self._items and self._items[0][1].done():
            offset, fut = self._items.popleft()
            ready.append((offset, fut.result()))
        return ready

    async def wait(self) -> None:
        """Wait until some document finishes (or return at once when nothing runs)."""
        if self._running == 0:
            return
        self._changed.clear()
        await self._changed.wait()

    async def cancel(self) -> list[int]:
        """Cancel unfinished work (shutdown past the grace period); returns the offsets dropped, to reprocess."""
        dropped = [offset for offset, fut in self._items]
        for _, fut in self._items:
            fut.cancel()
        await asyncio.gather(*(fut for _, fut in self._items), return_exceptions=True)
        self._items.clear()
        return dropped
