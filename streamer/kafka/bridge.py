"""The KafkaConsumer, the one thread that calls it, and its rebalance listener, bridged to asyncio.

kafka-python's consumer is not thread-safe, and its blocking calls must not run on the asyncio loop: every call
(poll, pause/resume, position, commit, close) goes through a single-thread executor, so calls are serialised
and the loop only awaits futures. kafka-python 3 runs the group protocol (heartbeats, rebalances) on its own
I/O thread, which is also where rebalance listeners run; a listener must not block that thread, so ours is an
`AsyncConsumerRebalanceListener` that waits for the asyncio side through a kafka-python future.

Each poll also reports where this member stands: per owned partition its fetch position and the high watermark of
the last fetch (the end offset; None until a fetch since the partition was sought), and the group membership
(generation, stable or not, assignment, leader of how many members). `confirm_settled()` is the last check before
an idle member leaves; the group's leader leaves only once it is alone (tansu 0.6 loses a leader that leaves while
the group is forming, and then never completes a rebalance again). A member that the broker keeps without a stable
membership for longer than a rebalance may take says so, then gives up (`GroupStuckError`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.base import MemberState
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.future import Future as KafkaFuture

from streamer.kafka.settings import KafkaSettings
from streamer.threads import DaemonExecutor

log = logging.getLogger(__name__)

FETCH_BYTES_PER_PARTITION = 10 << 20
"""Large enough for a multi-megabyte page; memory is bounded by pausing, not by this."""
COMMIT_TIMEOUT_MS = 10_000
"""A commit that cannot reach the coordinator gives up this soon (and is retried): it holds the consumer thread,
and polling must go on."""
RECONNECT_BACKOFF_MAX_MS = 5_000
"""kafka-python backs off up to 30 s between reconnects by default; a restarted broker should be found sooner."""
OFFSET_CALL_TIMEOUT_MS = 10_000
"""`committed()` and `position()` (preparing new partitions) wait at most this long for the coordinator, then fail
and are retried: without a timeout they wait for good, holding the consumer thread and so every poll."""
STUCK_WARN_SESSIONS = 5
"""Without a stable membership (coordinator reachable) for the rebalance grace period plus this many session
timeouts, the member logs a warning, and again every as many (tansu's rebalances took up to 14 s = grace + 3
sessions with the tests' 3 s sessions on a loaded machine)."""
STUCK_EXIT_SESSIONS = 3
"""... and gives up (exit 1) after the max poll interval (the longest a Kafka broker waits for members to rejoin)
plus this many session timeouts."""


class GroupStuckError(Exception):
    """The coordinator answers, but has not given this member a stable assignment for longer than a rebalance takes."""


def _unstick_parked_records(consumer: KafkaConsumer) -> None:
    """Work around kafka-python 3.0.12 starving a partition that was paused with records still buffered.

    Its fetcher parks such records and restores them on resume only when its in-line slot is `None`, but a
    drained slot is left as an empty (falsy) object, so the parked records are never restored and the partition
    is never fetched again. Emptying a drained slot (on the consumer thread, between polls) lets them through.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    current = getattr(fetcher, "_next_partition_records", None)
    if current is not None and not current:
        fetcher._next_partition_records = None  # type: ignore[union-attr]


def _fetch_position(consumer: KafkaConsumer, tp: TopicPartition) -> int | None:
    """The offset the next fetch of an assigned partition starts at, without `position()`'s network round trips."""
    position = consumer._subscription.assignment[tp].position
    return None if position is None else int(position.offset)


def _forget_highwater(consumer: KafkaConsumer, tp: TopicPartition) -> None:
    """After a seek, the high watermark kafka-python kept for a partition it owned before is stale: drop it, so the
    end offset reported is always that of a fetch made since (None until then)."""
    state = consumer._subscription.assignment.get(tp)
    if state is not None:
        state.highwater = None


@dataclass(frozen=True, slots=True)
class Membership:
    """This member's view of the group after a poll."""

    generation: int
    """-1 until the member first joined."""
    stable: bool
    """Joined, and no rebalance running or announced (by a heartbeat) as far as this member knows."""
    assigned: frozenset[int]
    led: int = 0
    """As the group's leader, the number of members (itself included) it assigned partitions to; 0 otherwise."""


NOT_JOINED = Membership(-1, False, frozenset())


class _CountingAssignor(AbstractPartitionAssignor):
    """Delegates to a kafka-python assignor; reports how many members it assigns to (only a leader assigns) and
    the generation of each assignment this member receives (just before `on_partitions_assigned`)."""

    def __init__(
        self, inner: type[AbstractPartitionAssignor], seen: Callable[[int], None], received: Callable[[int], None]
    ) -> None:
        self._inner = inner
        self._seen = seen
        self._received = received

    @property
    def name(self) -> str:
        return str(self._inner.name)

    def assign(self, cluster: Any, members: Any) -> Any:
        self._seen(len(members))
        return self._inner.assign(cluster, members)

    def metadata(self, topics: Any) -> Any:
        return self._inner.metadata(topics)

    def on_assignment(self, assignment: Any, generation: int) -> None:
        self._received(generation)
        self._inner.on_assignment(assignment, generation)


@dataclass(slots=True)
class Polled:
    """One poll: records per partition, the end of each owned partition, and the membership after it."""

    records: dict[int, list[ConsumerRecord]]
    ends: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)
    """partition -> (fetch position, high watermark of a fetch since the partition was last sought, or None)."""
    member: Membership = NOT_JOINED


class RebalanceHandler(Protocol):
    """What the runtime does when partitions move (called on the asyncio loop)."""

    async def checkpoint_revoked(self, partitions: set[int]) -> dict[int, int]:
        """First step of a revocation, at once: write what is complete; return the offsets to commit now."""

    async def revoke(self, partitions: set[int]) -> dict[int, int]:
        """Let running documents finish (the grace period), write them; return the offsets to commit before the
        partitions go."""

    async def lose(self, partitions: set[int]) -> None:
        """Membership was lost: drop the partitions' state without committing."""

    def assign(self, partitions: set[int], epoch: int, generation: int) -> None:
        """New partitions of the group's `generation` (paused until the runtime has prepared them)."""

    def revoke_committed(self, offsets: dict[int, int], ok: bool) -> None:
        """Result of a commit made on revocation."""


class _Listener(AsyncConsumerRebalanceListener):
    def __init__(self, bridge: ConsumerBridge) -> None:
        self._bridge = bridge

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is complete at once, then what running documents finish in the grace period: a broker may
        complete the next generation before a slow member's revocation ends (tansu does as soon as the leader has
        rejoined), and a commit made after that is refused, so the work before the grace period is not risked."""
        bridge = self._bridge
        bridge.epoch += 1
        bridge.rebalancing = True
        partitions = bridge.mine(revoked)
        await self._commit(await bridge.on_loop(bridge.handler.checkpoint_revoked(partitions)))
        await self._commit(await bridge.on_loop(bridge.handler.revoke(partitions)))

    async def _commit(self, offsets: dict[int, int]) -> None:
        if not offsets:
            return
        bridge = self._bridge
        ok = True
        try:
            await bridge.consumer.commit_async(bridge.commit_map(offsets))
            log.info("committed on revocation %s", offsets, extra={"offsets": offsets})
        except KafkaError as exc:
            ok = False
            log.warning("commit on revocation failed (the next owner reprocesses from the last commit): %s", exc)
        bridge.loop.call_soon_threadsafe(bridge.handler.revoke_committed, offsets, ok)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        bridge = self._bridge
        bridge.epoch += 1
        bridge.rebalancing = True
        await bridge.on_loop(bridge.handler.lose(bridge.mine(lost)))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        bridge = self._bridge
        # Paused until the runtime has cleared stale output and rebuilt its dedup index for them.
        bridge.consumer.pause(*assigned)
        # A checkpoint taken between the revocation's start and the runtime hearing of it still named these
        # partitions under the revocation's epoch: it must not commit into the new assignment.
        bridge.epoch += 1
        bridge.rebalancing = False
        bridge.loop.call_soon_threadsafe(bridge.handler.assign, bridge.mine(assigned), bridge.epoch, bridge.generation)


class ConsumerBridge:
    """A group member of `settings.topic`; all its consumer calls are awaitable from asyncio."""

    def __init__(self, settings: KafkaSettings, handler: RebalanceHandler, *, max_poll_records: int) -> None:
        assert settings.topic is not None and settings.bootstrap_servers is not None
        self.settings = settings
        self.topic = settings.topic
        self.handler = handler
        self.max_poll_records = max_poll_records
        self.epoch = 0
        """Bumped on every revocation, loss and assignment: a commit prepared under an older epoch is not sent."""
        self.rebalancing = False
        """Between a revocation (or loss) and the next assignment: the member owns nothing it may count on."""
        self.generation = -1
        """The group generation of the last assignment received (set on kafka-python's I/O thread): the writer's
        fencing token in the names of the files it writes for those partitions (`core.keys`)."""
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        # A daemon thread: a consumer call stuck on a broker that is away must not keep a stopping process alive.
        self._executor = DaemonExecutor(1, "kafka-consumer")
        self._consumer: KafkaConsumer | None = None
        self._closing = False
        """Set on the consumer thread once an idle member decided to leave: no poll may start a rejoin after it."""
        self._led = 0
        """Members in the last assignment this member made as leader (set on kafka-python's I/O thread)."""
        self._waiting_alone = -2
        """The generation in which an idle leader last said it waits for the other members to leave."""
        self._unsettled_since: float | None = None
        """time.monotonic() since when this member has had no stable membership while its coordinator was known."""
        self._next_stuck_warning = 0.0

    @property
    def consumer(self) -> KafkaConsumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    def mine(self, partitions: set[TopicPartition]) -> set[int]:
        return {tp.partition for tp in partitions if tp.topic == self.topic}

    def commit_map(self, offsets: dict[int, int]) -> dict[TopicPartition, OffsetAndMetadata]:
        return {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.loop.run_in_executor(self._executor, fn, *args)

    def on_loop(self, coro: Coroutine[Any, Any, Any]) -> KafkaFuture:
        """Run `coro` on the asyncio loop; a kafka-python future its I/O thread can await without blocking.

        The future is resolved on kafka-python's own loop (`_net.call_soon_threadsafe`), which also wakes it;
        resolving it from the asyncio thread would leave the listener waiting for the next unrelated wake-up.
        """
        result = KafkaFuture()
        net = getattr(self._consumer, "_net", None)

        def resolve(done: concurrent.futures.Future[Any]) -> None:
            def settle() -> None:
                if done.cancelled():
                    result.failure(KafkaError("rebalance handler cancelled"))
                elif done.exception() is not None:
                    result.failure(done.exception())
                else:
                    result.success(done.result())

            if net is not None:
                net.call_soon_threadsafe(settle)
            else:
                settle()

        asyncio.run_coroutine_threadsafe(coro, self.loop).add_done_callback(resolve)
        return result

    async def start(self) -> None:
        self._consumer = await self._call(self._make)

    def _make(self) -> KafkaConsumer:
        s = self.settings
        consumer = KafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.group_id,
            client_id=s.client_id,
            enable_auto_commit=False,
            # The crawl producer sends in transactions: records of an aborted one are neither processed here nor
            # found by its resumed run's scan, which reads the same way (producers/recovery.py).
            isolation_level="read_committed",
            auto_offset_reset=s.auto_offset_reset,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            max_poll_records=self.max_poll_records,
            max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            # Eager protocols: every rebalance revokes everything first, which the dedup rebuild relies on.
            partition_assignment_strategy=tuple(
                _CountingAssignor(a, self._note_led, self._note_generation)
                for a in (RangePartitionAssignor, RoundRobinPartitionAssignor)
            ),
        )
        consumer.subscribe([self.topic], listener=_Listener(self))
        return consumer

    def _note_generation(self, generation: int) -> None:
        self.generation = generation

    def _note_led(self, members: int) -> None:
        self._led = members
        log.info("leading the group: assigning its partitions to %d members", members, extra={"members": members})

    async def poll(self, allowed: set[int], timeout_ms: int) -> Polled:
        """Fetch from the partitions in `allowed` (all others paused); records, partition ends and membership."""
        return await self._call(self._poll, set(allowed), timeout_ms)  # type: ignore[no-any-return]

    def _poll(self, allowed: set[int], timeout_ms: int) -> Polled:
        if self._closing:
            time.sleep(timeout_ms / 1000)
            return Polled({}, {}, self._membership())
        c = self.consumer
        assigned = c.assignment()
        paused = c.paused()
        to_pause = [tp for tp in assigned if tp.partition not in allowed and tp not in paused]
        to_resume = [tp for tp in assigned if tp.partition in allowed and tp in paused]
        if to_pause:
            c.pause(*to_pause)
        if to_resume:
            c.resume(*to_resume)
        batches = c.poll(timeout_ms=timeout_ms, max_records=self.max_poll_records)
        _unstick_parked_records(c)
        records = {tp.partition: recs for tp, recs in batches.items() if tp.topic == self.topic}
        ends = {
            tp.partition: (_fetch_position(c, tp), c.highwater(tp)) for tp in c.assignment() if tp.topic == self.topic
        }
        member = self._membership()
        self._watch(member)
        return Polled(records, ends, member)

    def _membership(self) -> Membership:
        """On the consumer thread. kafka-python keeps "a heartbeat said the group is rebalancing" (rejoin needed) in
        its coordinator until the next poll starts the rejoin; a member that looked only at its state would call a
        group stable that is already moving."""
        c = self.consumer
        meta = c.group_metadata()
        coordinator = c._coordinator
        stable = (
            meta.state is MemberState.STABLE
            and meta.generation_id >= 0
            and not self.rebalancing
            and not coordinator.rejoining
            and not coordinator.need_rejoin()
        )
        assigned = frozenset(tp.partition for tp in c.assignment() if tp.topic == self.topic)
        led = self._led if coordinator._is_leader else 0
        return Membership(meta.generation_id, stable, assigned, led)

    def _watch(self, member: Membership) -> None:
        """On the consumer thread, after a poll: a member the coordinator keeps rebalancing for longer than any
        rebalance takes must not wait silently for good (tansu 0.6 can lose a group's leader and then never
        complete a rebalance). Time without a reachable coordinator (a broker away) does not count."""
        now = time.monotonic()
        if member.stable or self.consumer._coordinator.coordinator_id is None:
            self._unsettled_since = None
            return
        s = self.settings
        session_s = s.session_timeout_ms / 1000
        warn_every = s.rebalance_grace_s + STUCK_WARN_SESSIONS * session_s
        give_up = s.max_poll_interval_ms / 1000 + STUCK_EXIT_SESSIONS * session_s
        if self._unsettled_since is None:
            self._unsettled_since = now
            self._next_stuck_warning = now + warn_every
            return
        stuck = now - self._unsettled_since
        if stuck >= give_up:
            raise GroupStuckError(
                f"no stable group membership for {stuck:.0f}s (generation {member.generation}) although the "
                "coordinator answers: the broker does not complete the rebalance"
            )
        if now >= self._next_stuck_warning:
            self._next_stuck_warning = now + warn_every
            log.warning(
                "no stable group membership for %.0fs (generation %d, assigned %s), still rebalancing; giving up "
                "(exit 1) after %.0fs",
                stuck,
                member.generation,
                sorted(member.assigned),
                give_up,
            )

    async def confirm_settled(self, member: Membership, since: float) -> bool:
        """Whether the group is still as `member` says and a heartbeat sent after `since` (time.monotonic()) came
        back without news of a rebalance. If so, this member stops polling for good (so no rejoin can start
        before it leaves): only `close()` should follow."""
        return await self._call(self._confirm_settled, member, since)  # type: ignore[no-any-return]

    def _confirm_settled(self, member: Membership, since: float) -> bool:
        heartbeat = self.consumer._coordinator.heartbeat
        # Read the heartbeat times first: a "rebalance in progress" answer marks the rejoin before it counts as
        # received, so a member that sees the answer also sees the rejoin.
        sent, received = heartbeat.last_send, heartbeat.last_receive
        if not (since < sent <= received):
            return False
        if self._membership() != member:
            return False
        if member.led > 1:
            # tansu 0.6 keeps a leader that leaves while the group is forming (after another member left or joined)
            # as the leader of the next generation; nobody can complete a rebalance after that, for good. Other
            # members leave first, each a rebalance this member leads; alone, it leaves a formed group.
            if self._waiting_alone != member.generation:
                self._waiting_alone = member.generation
                log.info("idle, and leading %d members: leaving once the others have left", member.led)
            return False
        self._closing = True
        return True

    async def partition_count(self) -> int:
        """How many partitions the topic has, from the consumer's metadata."""
        return await self._call(lambda: len(self.consumer.partitions_for_topic(self.topic) or ()))  # type: ignore[no-any-return]

    async def rewind(self, partitions: set[int]) -> dict[int, int]:
        """Seek owned partitions to their committed offset (or the reset position without one); returns them.

        kafka-python keeps the fetch position of a partition that stays assigned across a rebalance, but the
        runtime dropped what it had fetched and not committed: fetching must restart at the commit.
        """
        return await self._call(self._rewind, set(partitions))  # type: ignore[no-any-return]

    def _rewind(self, partitions: set[int]) -> dict[int, int]:
        c = self.consumer
        owned = {tp.partition for tp in c.assignment()}
        positions: dict[int, int] = {}
        for p in sorted(partitions & owned):
            tp = TopicPartition(self.topic, p)
            committed = c.committed(tp, timeout_ms=OFFSET_CALL_TIMEOUT_MS)
            if committed is not None:
                c.seek(tp, committed)
            elif self.settings.auto_offset_reset == "earliest":
                c.seek_to_beginning(tp)
            else:
                c.seek_to_end(tp)
            position = c.position(tp, timeout_ms=OFFSET_CALL_TIMEOUT_MS)
            if position is None:
                raise KafkaTimeoutError(f"no position for partition {p} in {OFFSET_CALL_TIMEOUT_MS} ms")
            positions[p] = position
            _forget_highwater(c, tp)
        return positions

    async def commit(self, offsets: dict[int, int], epoch: int) -> dict[int, int]:
        """Commit offsets of partitions still owned under `epoch`; returns what was committed (raises KafkaError)."""
        return await self._call(self._commit, dict(offsets), epoch)  # type: ignore[no-any-return]

    def _commit(self, offsets: dict[int, int], epoch: int) -> dict[int, int]:
        if epoch != self.epoch:
            return {}
        assigned = {tp.partition for tp in self.consumer.assignment()}
        owned = {p: o for p, o in offsets.items() if p in assigned}
        if owned:
            self.consumer.commit(self.commit_map(owned), timeout_ms=COMMIT_TIMEOUT_MS)
        return owned

    async def close(self, timeout_s: float) -> bool:
        """Leave the group (the listener's revocation makes the last commit), then stop the thread; at most about
        `timeout_s`. False if leaving was abandoned: the group then waits out this member's session timeout."""
        left = True
        if self._consumer is not None:
            consumer = self._consumer
            try:
                await asyncio.wait_for(self._call(consumer.close, False, int(timeout_s * 1000)), timeout_s + 1)
            except TimeoutError:
                left = False
                log.warning(
                    "leaving the group did not finish in %.0fs: abandoned (the group drops this member "
                    "after its session timeout)",
                    timeout_s,
                )
            except Exception as exc:  # leaving is best effort: the session timeout frees the partitions anyway
                left = False
                log.warning("consumer close failed: %s", exc)
        self._executor.shutdown(wait=False, cancel_futures=True)
        return left
