"""Worker threads that cannot hold up the exit of a process that has decided to stop.

`concurrent.futures.ThreadPoolExecutor` joins its workers when the interpreter exits, without a timeout (and
`asyncio.run` joins the loop's default executor the same way), so one blocking call that never returns (leaving
the group through a broker that is away, a dead-letter flush, an object-store write retried forever) keeps the
process alive after it logged that it was done. These workers are daemon threads and `shutdown()` waits a bounded
time: whatever still runs then is abandoned, and the owner logs what that was.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """Up to `max_workers` daemon threads, started on demand; `shutdown(wait=True)` waits `join_timeout_s` at most.

    A `ThreadPoolExecutor` only by type, because `loop.set_default_executor()` accepts nothing else: none of its
    machinery is used (its workers are the threads the interpreter joins at exit)."""

    def __init__(self, max_workers: int, name: str, *, join_timeout_s: float = 2.0) -> None:
        if max_workers <= 0:
            raise ValueError("max_workers must be positive")
        super().__init__(max_workers, thread_name_prefix=name)
        self.name = name
        self.max_workers = max_workers
        self.join_timeout_s = join_timeout_s
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}
        """thread name -> the call it is in"""
        self._shutdown = False

    @property
    def running(self) -> list[str]:
        """The calls started and not finished (what a shutdown now would abandon)."""
        with self._lock:
            return list(self._running.values())

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self.name}: cannot schedule new calls after shutdown")
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._jobs.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_workers:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)
            return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                self._jobs.put(None)  # wake the next worker too
                return
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                name = threading.current_thread().name
                with self._lock:
                    self._running[name] = getattr(fn, "__qualname__", repr(fn))
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                finally:
                    with self._lock:
                        self._running.pop(name, None)
            del job, future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        job[0].cancel()
            self._jobs.put(None)
        if not wait:
            return
        deadline = time.monotonic() + self.join_timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = self.running
        if stuck:
            log.warning("abandoning %s on %s after %.0fs", ", ".join(stuck), self.name, self.join_timeout_s)
