"""A TCP proxy that can hold requests: what a client sends while it holds is kept, and delivered on release.

It plays a network that delays a request past its sender's life: the object-store tests hold a consumer's
PUT, let the consumer lose its partition and die, then release the request, which the server carries out as if
it had come late. Bytes are read from each side as they arrive (so a client that exits leaves nothing unread
in its socket to turn its close into a reset) and forwarded unless held (answers are never held, or a request
let through would wait for its answer and be sent again); a side's end of stream is passed on once what came
before it has been.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from devtools.ports import free_port


class _Pipe:
    """One direction of one connection."""

    def __init__(self, src: socket.socket, dst: socket.socket, *, request: bool) -> None:
        self.src = src
        self.dst = dst
        self.request = request
        """Client to server."""
        self.pending: list[bytes] = []
        self.ended = False
        self.closed = False
        self.sending = threading.Lock()
        """Taken while a batch is sent, so two deliveries of one pipe never interleave."""


class HoldingProxy:
    """Forwards `127.0.0.1:port` to `target_port` on loopback; `hold()` and `release()` switch the delivery of
    what clients send."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._held = False
        self._pipes: list[_Pipe] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def held_requests(self) -> list[bytes]:
        """What clients sent on each connection while held (the start of a request), not delivered yet."""
        with self._lock:
            return [b"".join(pipe.pending) for pipe in self._pipes if pipe.request and pipe.pending]

    def hold(self) -> None:
        with self._lock:
            self._held = True

    def release(self) -> None:
        with self._lock:
            self._held = False
            pipes = list(self._pipes)
        for pipe in pipes:
            self._deliver(pipe)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            for pipe in (_Pipe(client, server, request=True), _Pipe(server, client, request=False)):
                with self._lock:
                    self._pipes.append(pipe)
                threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: _Pipe) -> None:
        while True:
            try:
                data = pipe.src.recv(1 << 16)
            except OSError:
                data = b""
            with self._lock:
                if data:
                    pipe.pending.append(data)
                else:
                    pipe.ended = True
            self._deliver(pipe)
            if not data:
                return

    def _deliver(self, pipe: _Pipe) -> None:
        with pipe.sending:
            with self._lock:
                if (self._held and pipe.request) or pipe.closed:
                    return
                chunks, pipe.pending = pipe.pending, []
                end = pipe.closed = pipe.ended
            try:
                for chunk in chunks:
                    pipe.dst.sendall(chunk)
                if end:
                    pipe.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


@contextmanager
def holding_proxy(target_port: int) -> Iterator[HoldingProxy]:
    proxy = HoldingProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
