"""Group scenarios shared by the tests and by `python -m tests.kafka.join_drain` (the same scenario run N times)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kafka import KafkaConsumer

from devtools.tansu import KafkaTopic, wait_for
from tests.kafka.helpers import SESSION_TIMEOUT_MS, Consumer, Output, documents, read_output, wait_committed


def log_time(event: dict) -> float:
    """Wall-clock time (epoch seconds) of a JSON log event."""
    return datetime.fromisoformat(event["ts"]).timestamp()


def last_commit_time(consumers: list[Consumer]) -> float:
    """When the group last committed anything (the latest "committed" event of any consumer's current run)."""
    return max(log_time(e) for c in consumers for e in c.events() if e["msg"].startswith("committed"))


def wait_exits(consumers: list[Consumer], timeout: float) -> dict[str, tuple[int, float]]:
    """Until every consumer exited: name -> (exit code, wall-clock exit time, to the polling interval)."""
    exits: dict[str, tuple[int, float]] = {}
    deadline = time.monotonic() + timeout
    while len(exits) < len(consumers):
        for c in consumers:
            if c.name not in exits and c.exited:
                assert c.proc is not None
                exits[c.name] = (c.proc.returncode, time.time())
        if time.monotonic() > deadline:
            running = [c for c in consumers if c.name not in exits]
            tails = "\n".join(f"--- {c.name}:\n{c.log()[-2000:]}" for c in running)
            raise AssertionError(f"{[c.name for c in running]} still running after {timeout:.0f}s\n{tails}")
        time.sleep(0.1)
    return exits


def llm_attempts(out: Output) -> int:
    """LLM requests the written outcomes account for (every attempt of every document, rows and rejections)."""
    return sum(r["llm_attempts"] or 0 for r in out.rows + out.rejected)


@dataclass
class GroupRun:
    """What a scenario's members did."""

    docs: list[tuple[bytes, bytes]]
    out: Output
    members: list[Consumer]
    exits: dict[str, tuple[int, float]]
    """name -> (exit code, wall-clock exit time)"""
    drained: float
    """wall-clock time of the group's last commit"""
    started: dict[str, float]
    """name -> wall-clock start time"""

    @property
    def exact(self) -> bool:
        """Every document once (row or rejection), every offset once."""
        out = self.out
        return (
            max(out.sources.values(), default=0) == 1
            and max(out.doc_ids.values(), default=0) == 1
            and set(out.doc_ids) == {k.decode() for k, _ in self.docs}
            and len(out.rows) + len(out.rejected) == len(self.docs)
        )

    @property
    def missing(self) -> int:
        return len({k.decode() for k, _ in self.docs} - set(self.out.doc_ids))

    @property
    def exit_delays(self) -> dict[str, float]:
        """Seconds from the last commit to each member's exit (negative: it left before the topic was drained)."""
        return {name: t - self.drained for name, (_, t) in self.exits.items()}

    def revocations(self) -> list[dict]:
        return [e for m in self.members for e in m.events() if e["msg"].startswith("revoked partitions [")]

    def failed_revocation_commits(self) -> int:
        return sum(m.log().count("commit on revocation failed") for m in self.members)


def join_then_drain(
    topic: KafkaTopic,
    llm_url: str,
    tmp_path: Path,
    *,
    idle_s: float,
    docs: int = 150,
    members: int = 4,
    join_every_s: float = 3.0,
    extra: tuple[str, ...] = (),
) -> GroupRun:
    """The first member starts; once it committed something the others join `join_every_s` apart while work is
    left; all run with --stop-after-idle until they exit."""
    messages = documents(docs)
    topic.produce(messages)  # type: ignore[arg-type]
    out_uri = str(tmp_path / "out")
    flags = ("--stop-after-idle", str(idle_s), "--max-in-flight-docs", "8", *extra)
    group = [Consumer(topic, out_uri, llm_url, tmp_path, *flags, name=f"m{i}") for i in range(members)]
    started: dict[str, float] = {}
    try:
        for i, m in enumerate(group):
            if i == 1:
                wait_committed(topic, 10)
            elif i > 1:
                time.sleep(join_every_s)
            started[m.name] = time.time()
            m.start()
        exits = wait_exits(group, timeout=240)
    finally:
        for m in group:
            m.stop()
    return GroupRun(messages, read_output(out_uri, topic.name), group, exits, last_commit_time(group), started)


class _PlainMember(threading.Thread):
    """A kafka-python consumer of the topic's group, polling on its own thread until `halt()`."""

    def __init__(self, topic: KafkaTopic, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=topic.bootstrap,
            group_id=topic.group_id,
            client_id=name,
            enable_auto_commit=False,
            isolation_level="read_committed",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=SESSION_TIMEOUT_MS // 3,
        )
        self.consumer.subscribe([topic.name])
        self._halt = threading.Event()
        self.settled = False
        """Assigned partitions in a stable generation, with no rebalance announced."""

    def run(self) -> None:
        while not self._halt.is_set():
            self.consumer.poll(timeout_ms=100)
            coordinator = self.consumer._coordinator
            self.settled = bool(self.consumer.assignment()) and coordinator.stable() and not coordinator.need_rejoin()

    @property
    def leader(self) -> bool:
        return bool(self.consumer._coordinator._is_leader)

    def halt(self) -> None:
        """Stop polling (heartbeats go on: it stays a member, but cannot rejoin)."""
        self._halt.set()
        self.join(30)

    def leave(self) -> None:
        self.halt()
        self.consumer.close(autocommit=False)


def wedge_group(topic: KafkaTopic) -> None:
    """Leave `topic`'s group in the state tansu 0.6 never rebalances out of, with plain kafka-python consumers.

    Three members form the group; a follower leaves (the group is forming again) and then the leader leaves before
    it rejoined. tansu keeps the departed leader as the leader of the forming group: every JoinGroup answers with
    it, every follower's SyncGroup with "rebalance in progress", and no member is ever assigned again. Checked here
    on the third member, which then leaves too (the group stays wedged, empty)."""
    members = [_PlainMember(topic, f"plain-{i}") for i in range(3)]
    for m in members:
        m.start()
    try:
        wait_for(lambda: all(m.settled for m in members), 60, "three plain members to form the group")
        leader = next(m for m in members if m.leader)
        follower, last = (m for m in members if m is not leader)
        leader.halt()
        follower.leave()
        leader.leave()
        time.sleep(SESSION_TIMEOUT_MS / 1000)  # the last member's heartbeat has announced the rebalance
        deadline = time.monotonic() + 10
        while not last.settled and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not last.settled, "tansu completed the rebalance: the group did not wedge"
    finally:
        for m in members:
            if m.is_alive():
                m.leave()
