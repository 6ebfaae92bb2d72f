"""One run at a time per work dir: an exclusive `flock` that the kernel drops when its holder dies.

cron fires again while a long run still trains; the second run must leave at once. A lock file with a pid in
it goes stale when a run is killed (-9, OOM, reboot) and needs a liveness check; an flock cannot go stale: it
belongs to an open file description, which dies with the process. The holder's pid, host and start time are
written into the file only to say who holds it. Only the main process of a distributed launch takes it. The
work dir belongs on a local filesystem; a multi-node run needs a shared one (NFS), where Linux emulates flock
with a POSIX lock over the whole file, which guards against other runs only if the server keeps such locks.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from trainer.exceptions import LockHeld


class RunLock:
    """`with RunLock(path):` holds the lock for the block or raises `LockHeld` naming the holder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise LockHeld(f"another trainer run holds {self.path} ({holder}); leaving it alone") from None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} since={stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
