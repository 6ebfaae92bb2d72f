"""The consumer process: lifecycle, rebalances, backpressure, idle stop, and the one place offsets are committed.

    run_kafka(config, engine_factory) -> exit code

Two tasks share the asyncio loop: the fetch loop polls the consumer (on its own thread) and queues records; the
pump starts documents, writes finished outcomes in offset order and commits what is durable. Partitions with a
backlog are paused, and polling goes on so the member stays in the group. SIGTERM/SIGINT stop fetching, give
running documents `grace_period_s`, flush, commit and leave the group; a second signal skips the grace period.
A revocation gives running documents of the revoked partitions `rebalance_grace_s` before it commits.
`stop_after_idle` leaves only when every owned partition is read to its broker-reported end and committed, the
member has had nothing to do for that long, and the group is stable (`_idle_exit`). Once the process has decided
to stop, every step left (final commit, leaving the group, closing the dead-letter producer, stopping threads) is
bounded, and what is abandoned is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass

from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from core.exceptions import PipelineError
from core.markers import CommitMarkers
from core.topics import ensure_topic, partition_count
from streamer.engine import Engine
from streamer.kafka.bridge import NOT_JOINED, ConsumerBridge, Membership
from streamer.kafka.deadletters import DeadLetterError, DeadLetters, UndeliverableDeadLetter
from streamer.kafka.settings import KafkaRunConfig
from streamer.metrics import ConsumerMetrics, LLMStatsCollector, serve
from streamer.pipeline import Pipeline
from streamer.recovery import clear_uncommitted
from streamer.sinks.parquet import ParquetSink
from streamer.threads import DaemonExecutor

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 100
TICK_S = 0.5
"""How often the pump wakes without news: idle checks and retries of failed commits."""
STOP_COMMIT_TIMEOUT_S = 15.0
"""The last commit of a stopping process (sink flush, dead letters, offsets) gives up after this long: exit 1."""
LEAVE_TIMEOUT_S = 10.0
"""Leaving the group (the consumer's close) is abandoned after this long; the session timeout frees the member."""
DEAD_LETTERS_CLOSE_TIMEOUT_S = 5.0
"""Closing the dead-letter producer (everything it holds was awaited before the last commit)."""
TASKS_STOP_TIMEOUT_S = 5.0
"""The fetch and commit loops, once told to stop (a poll in progress is abandoned after this)."""


class FatalError(Exception):
    """Something the runtime cannot recover from in-process; nothing more is committed."""


@dataclass(frozen=True, slots=True)
class KafkaCommitter:
    """The `Committer` of one checkpoint: the group's offsets, if this member still owns the partitions under the
    membership `epoch` the checkpoint was taken in, then the commit markers."""

    bridge: ConsumerBridge
    epoch: int
    markers: CommitMarkers

    async def commit(self, offsets: dict[int, int]) -> dict[int, int]:
        return await self.bridge.commit(offsets, self.epoch)

    def mark(self, committed: dict[int, int]) -> None:
        self.markers.advance(committed)


class KafkaRuntime:
    """One consumer process of the group. Implements the bridge's `RebalanceHandler`."""

    def __init__(self, config: KafkaRunConfig, engine: Engine, metrics: ConsumerMetrics) -> None:
        self.config = config
        self.kafka = config.kafka
        assert self.kafka.topic is not None and self.kafka.bootstrap_servers is not None
        self.topic: str = self.kafka.topic
        self.engine = engine
        self.metrics = metrics
        self.location = config.storage.open(config.output, create=True)
        self.sink = ParquetSink(self.location, config.roll, retry_deadline_s=None)
        self.markers = CommitMarkers(self.location, self.topic, self.kafka.group_id)
        self.pipeline: Pipeline[ConsumerRecord]
        self.bridge: ConsumerBridge
        self._stopping = False
        self._forced = False
        self._refused: set[int] = set()  # partitions whose commit on revocation the group refused
        self._fatal: BaseException | None = None
        self._member: Membership = NOT_JOINED
        self._last_work = 0.0
        """Loop time when this member last had something to do (records to process); rebalances do not count."""
        self._unassigned_since: tuple[int, float] | None = None
        """(generation, loop time) since which this member has owned nothing in a stable generation."""
        self._idle_since: float | None = None
        """time.monotonic() when the idle exit's conditions last became true (a heartbeat must follow it)."""
        self._commit_wanted = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        """One commit at a time, from checkpoint to marker: the background loop's and the pump's (idle exit, stop)
        would otherwise overlap, and the older one, held up by its dead letters, could commit after the newer."""
        self._preparing: set[asyncio.Task[None]] = set()
        self._marking: set[asyncio.Future[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            await loop.run_in_executor(None, self.sink.setup)
            dead_letters = await loop.run_in_executor(None, self._dead_letters)
            stack.push_async_callback(self._close_dead_letters, dead_letters)
            self.pipeline = Pipeline(
                self.topic,
                self.engine.processor,
                self.sink,
                dead_letters,
                self.metrics,
                max_in_flight=self.config.max_in_flight_docs,
                dedup=self.engine.dedup,
            )
            stack.callback(self._close_pipeline)
            self.bridge = ConsumerBridge(self.kafka, self, max_poll_records=min(500, self.config.max_in_flight_docs))
            await self.bridge.start()
            stack.push_async_callback(self.bridge.close, LEAVE_TIMEOUT_S)
            self._install_signals(loop)
            self._last_work = loop.time()
            log.info("consuming %s as group %s into %s", self.topic, self.kafka.group_id, self.config.output)
            fetcher = asyncio.create_task(self._fetch_loop(), name="kafka-fetch")
            committer = asyncio.create_task(self._commit_loop(), name="kafka-commit")
            try:
                return await self._pump()
            except BaseException as exc:
                self._fail(exc)
                log.error("stopping without committing: %s", exc, exc_info=not isinstance(exc, FatalError))
                return 1
            finally:
                self._stopping = True
                committer.cancel()
                await self._stop_tasks(fetcher, committer)
                for task in list(self._preparing):
                    task.cancel()
                if self._fatal is not None:
                    await self.pipeline.close_partitions(list(self.pipeline.parts))
        return 1

    async def _stop_tasks(self, *tasks: asyncio.Task[None]) -> None:
        """Let the loops see `_stopping`; a poll stuck on the consumer thread is abandoned after a while."""
        _, pending = await asyncio.wait(tasks, timeout=TASKS_STOP_TIMEOUT_S)
        for task in pending:
            log.warning(
                "abandoning %s after %.0fs (a consumer call does not return)", task.get_name(), TASKS_STOP_TIMEOUT_S
            )
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_dead_letters(self, dead_letters: DeadLetters) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(None, dead_letters.close, DEAD_LETTERS_CLOSE_TIMEOUT_S),
                DEAD_LETTERS_CLOSE_TIMEOUT_S + 2,
            )
        except TimeoutError:
            log.warning("closing the dead-letter producer took over %.0fs: abandoned", DEAD_LETTERS_CLOSE_TIMEOUT_S)

    def _close_pipeline(self) -> None:
        abandoned = self.pipeline.close()
        if abandoned:
            log.warning(
                "abandoning object-store calls still running at exit (nothing they write is committed): %s",
                ", ".join(abandoned),
            )

    def _dead_letters(self) -> DeadLetters:
        bootstrap = self.kafka.bootstrap_servers
        assert bootstrap is not None
        partitions = partition_count(bootstrap, self.topic) or 1
        ensure_topic(bootstrap, self.kafka.dead_letter_topic, partitions)
        return DeadLetters(bootstrap, self.kafka.dead_letter_topic)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            log.warning("second %s: skipping the grace period", sig.name)
            self._forced = True
            self.sink.abort_retries()
        else:
            log.info(
                "%s: stop fetching, finish in-flight documents (grace %.0fs), flush, commit",
                sig.name,
                self.kafka.grace_period_s,
            )
            # A store still failing after the grace period will not be waited for: exit 1, reprocess later.
            asyncio.get_running_loop().call_later(self.kafka.grace_period_s, self.sink.abort_retries)
        self._stopping = True
        self.pipeline.wake.set()

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self.sink.abort_retries()
        self.pipeline.wake.set()

    # -- the two loops ---------------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        """Poll until stopping; errors the client recovers from (a broker away) are logged and retried."""
        loop = asyncio.get_running_loop()
        while not self._stopping and self._fatal is None:
            allowed = self.pipeline.fetchable()
            try:
                polled = await self.bridge.poll(allowed, POLL_TIMEOUT_MS)
            except KafkaError as exc:
                log.warning("poll failed, retrying: %s", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception as exc:
                self._fail(exc)
                return
            records = polled.records
            fresh = sum(self.pipeline.accept(p, recs) for p, recs in records.items())
            if records:
                log.debug("fetched %s", {p: (recs[0].offset, recs[-1].offset) for p, recs in records.items()})
            self.pipeline.note_ends(polled.ends, allowed)
            self._member = polled.member
            if fresh:
                self._last_work = loop.time()
                self.pipeline.wake.set()
            for p, (_, hw) in polled.ends.items():
                state = self.pipeline.parts.get(p)
                if state is not None and hw is not None:
                    self.metrics.lag.labels(str(p)).set(max(0, hw - state.committed))
            self.metrics.paused.set(len(self.pipeline.parts) - len(self.pipeline.fetchable()))

    async def _pump(self) -> int:
        """Start documents, write outcomes in order, commit; returns the exit code."""
        while True:
            if self._fatal is not None:
                raise FatalError(str(self._fatal)) from self._fatal
            if self._stopping:
                return await self._drain_and_stop()
            self.pipeline.dispatch()
            async with self.pipeline.lock:
                written = await self.pipeline.emit()
            if written or self.pipeline.uncommitted:
                self._commit_wanted.set()
            if await self._idle_exit():
                # A leader that assigned to itself alone has nobody to wait for.
                linger = self.kafka.heartbeat_interval_ms / 1000 if self._member.led != 1 else 0.0
                log.info(
                    "idle for %.0fs, every owned partition (%s) read to its end and committed, group stable "
                    "(generation %d): leaving in %.1fs",
                    self.kafka.stop_after_idle,
                    sorted(self._member.assigned),
                    self._member.generation,
                    linger,
                )
                # One heartbeat more in the group, polling no longer: members idle at the same time can confirm
                # too and leave with this one, instead of one per rebalance (tansu delays every rejoin by 3 s).
                await asyncio.sleep(linger)
                return 0
            await self._wait(TICK_S)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pipeline.wake.wait(), seconds)
        self.pipeline.wake.clear()

    async def _idle_exit(self) -> bool:
        """`--stop-after-idle`: whether this member may leave now. It may when

        - the group is stable as far as it knows (joined, no revocation or preparation under way, no rebalance
          announced by a heartbeat) and it has prepared exactly the partitions it is assigned;
        - every one of them has been read to the end offset of a fetch made since it was assigned (a partition
          never fetched is not known to be at its end) and everything read is committed;
        - it has had nothing to do for `stop_after_idle` seconds (records to process reset this clock; being handed
          partitions that are already at their end does not), and, owning nothing, it has been unassigned in this
          stable generation for that long;
        - and then a heartbeat sent after all of that came back without news of a rebalance.

        Being at the end is judged from the broker's end offsets, never from the time since the last record."""
        limit = self.kafka.stop_after_idle
        if limit is None:
            return False
        now = asyncio.get_running_loop().time()
        parts = self.pipeline.parts
        if self.pipeline.busy or any(state.behind for state in parts.values()):
            self._last_work = now
        member = self._member
        settled = (
            member.stable
            and not self.bridge.rebalancing
            and not self._preparing
            and not self.pipeline.revoking
            and set(parts) == member.assigned
        )
        if not settled or not all(state.at_end for state in parts.values()):
            self._idle_since = None
            return False
        since = self._last_work
        if not parts:
            if self._unassigned_since is None or self._unassigned_since[0] != member.generation:
                self._unassigned_since = (member.generation, now)
            since = max(since, self._unassigned_since[1])
        if now - since < limit:
            self._idle_since = None
            return False
        if not all(state.all_committed for state in parts.values()):
            # The open file of each partition is written only now: a caught-up stream is not cut into tiny files.
            await self._commit(flush=True)
            self._idle_since = None
            return False
        if self._idle_since is None:
            self._idle_since = time.monotonic()
            return False
        return await self.bridge.confirm_settled(member, self._idle_since)

    async def _commit_loop(self) -> None:
        """Commit in the background: a commit waits for the consumer thread (behind a poll), and the pump must
        keep starting documents meanwhile. A failed commit is retried after a pause."""
        while not self._stopping and self._fatal is None:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            if not await self._commit(flush=False):
                await asyncio.sleep(1.0)

    async def _commit(self, *, flush: bool) -> bool:
        """The commit order: sink, then dead letters, then offsets. True if all that is durable is committed."""
        async with self._commit_lock:
            async with self.pipeline.lock:
                epoch = self.bridge.epoch
                offsets = await self.pipeline.checkpoint(flush=flush)
            if not offsets:
                return True
            try:
                await self.pipeline.deliver_dead_letters()
            except UndeliverableDeadLetter as exc:
                self._fail(FatalError(f"{exc}: fix the dead-letter topic (--dlq-topic) and restart"))
                return False
            except DeadLetterError as exc:
                log.warning("not committing yet: %s", exc)
                return False
            try:
                done = await self.pipeline.finalize(KafkaCommitter(self.bridge, epoch, self.markers), offsets)
            except KafkaError as exc:
                self.metrics.commits.labels("failed").inc()
                log.warning("commit failed, will retry: %s", exc)
                return False
        self.metrics.commits.labels("ok").inc()
        log.info("committed %s", done, extra={"offsets": done})
        return True

    async def _drain_and_stop(self) -> int:
        """Grace period for running documents, then flush and commit what is complete, in offset order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.kafka.grace_period_s
        while self.pipeline.running and not self._forced and loop.time() < deadline:
            async with self.pipeline.lock:
                await self.pipeline.emit()
            await self._wait(min(TICK_S, max(0.0, deadline - loop.time())))
        async with self.pipeline.lock:
            await self.pipeline.emit()
            for p, state in self.pipeline.parts.items():
                dropped = await state.window.cancel()
                if dropped or state.backlog:
                    log.info(
                        "partition %d: %d unfinished records left for the next run",
                        p,
                        len(dropped) + len(state.backlog),
                    )
                state.backlog.clear()
        try:
            committed = await asyncio.wait_for(self._commit(flush=True), STOP_COMMIT_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "the last commit did not finish in %.0fs: abandoned, the next owner reprocesses from the last commit",
                STOP_COMMIT_TIMEOUT_S,
            )
            self.sink.abort_retries()
            return 1
        return 0 if committed and not self.pipeline.uncommitted else 1

    # -- rebalances (RebalanceHandler) -----------------------------------------------------------------------

    async def _locked(self) -> None:
        """Take the pipeline lock for a rebalance; a sink stuck longer than a session would make us a zombie
        writer for partitions that are no longer ours, so give up on the process instead."""
        timeout = max(5.0, self.kafka.session_timeout_ms / 2000)
        try:
            await asyncio.wait_for(self.pipeline.lock.acquire(), timeout)
        except TimeoutError:
            self._fail(FatalError(f"output stuck for {timeout:.0f}s during a rebalance"))
            raise

    async def checkpoint_revoked(self, partitions: set[int]) -> dict[int, int]:
        """The revocation's first step: nothing new starts in `partitions` (what waits in their backlog is fetched
        again by the next owner), and what is complete is written and named for a commit right away, before the
        grace period."""
        self.pipeline.revoking |= partitions & set(self.pipeline.parts)
        for p in partitions:
            state = self.pipeline.parts.get(p)
            if state is not None:
                state.backlog.clear()
        if not partitions:
            return {}
        return await self._write_revoked(partitions, close=False)

    async def revoke(self, partitions: set[int]) -> dict[int, int]:
        if not partitions:
            return {}
        self.metrics.rebalances.labels("revoked").inc()
        refused, self._refused = partitions & self._refused, self._refused - partitions
        if refused:
            # The group refused the first commit: it has moved on, and a new owner may already have cleared the
            # partitions' uncommitted output and be writing the same offsets. A file written now could never be
            # committed and, landing after that clearing, would only be superseded (`core.keys`): the running
            # documents are dropped unwritten; the new owner redoes them.
            log.warning("commit on revocation refused for %s: dropping their running work unwritten", sorted(refused))
            await self._drop(refused)
            partitions = partitions - refused
            if not partitions:
                return {}
        finished, cancelled = await self._finish_running(partitions)
        offsets = await self._write_revoked(partitions, close=True)
        log.info(
            "revoked partitions %s, committing %s (%d running documents finished in the grace period, %d cancelled)",
            sorted(partitions),
            offsets,
            finished,
            cancelled,
            extra={"offsets": offsets, "finished": finished, "cancelled": cancelled},
        )
        return offsets

    async def _write_revoked(self, partitions: set[int], *, close: bool) -> dict[int, int]:
        """Emit, flush and deliver the dead letters of what is complete in `partitions` (then drop them when
        `close`, cancelling what still runs); the offsets to commit."""
        offsets: dict[int, int] = {}
        await self._locked()
        try:
            if self._fatal is None:
                await self.pipeline.emit(partitions)
                offsets = await self.pipeline.checkpoint(partitions, flush=True)
        except Exception as exc:
            log.warning("revoking %s without a commit: %s", sorted(partitions), exc)
            offsets = {}
        finally:
            if close:
                await self.pipeline.close_partitions(partitions)
            self.pipeline.lock.release()
        if offsets:
            try:
                await self.pipeline.deliver_dead_letters()
            except DeadLetterError as exc:
                log.warning("revoking %s without a commit: %s", sorted(partitions), exc)
                offsets = {}
        return offsets

    async def _finish_running(self, partitions: set[int]) -> tuple[int, int]:
        """The rebalance grace period: running documents of `partitions` get `rebalance_grace_s` to finish, so
        their paid LLM calls are written and committed instead of redone. kafka-python awaits this from its I/O
        thread through a kafka future, so heartbeats go on meanwhile. Returns (finished, still running)."""
        loop = asyncio.get_running_loop()
        running = self.pipeline.running_in(partitions)
        if running:
            self._last_work = loop.time()
        deadline = loop.time() + self.kafka.rebalance_grace_s
        finished = self.pipeline.finished
        while loop.time() < deadline and not self._forced and self._fatal is None:
            finished.clear()
            if not self.pipeline.running_in(partitions):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), min(TICK_S, max(0.0, deadline - loop.time())))
        left = self.pipeline.running_in(partitions)
        return running - left, left

    def revoke_committed(self, offsets: dict[int, int], ok: bool) -> None:
        self.metrics.commits.labels("ok" if ok else "failed").inc()
        if ok:
            self.pipeline.committed(offsets)
            marking = asyncio.ensure_future(self.pipeline.io(self.markers.advance, offsets))
            self._marking.add(marking)
            marking.add_done_callback(self._marked)
        else:
            self._refused |= set(offsets)

    def _marked(self, marking: asyncio.Future[None]) -> None:
        self._marking.discard(marking)
        if not marking.cancelled() and marking.exception() is not None:
            log.warning("commit markers of a revocation not written: %s", marking.exception())

    async def lose(self, partitions: set[int]) -> None:
        if not partitions:
            return
        self.metrics.rebalances.labels("lost").inc()
        log.warning("lost partitions %s (membership expired): dropping their uncommitted work", sorted(partitions))
        await self._drop(partitions)

    async def _drop(self, partitions: set[int]) -> None:
        """Close `partitions` without writing or committing anything: their next owner redoes the work."""
        await self._locked()
        try:
            await self.pipeline.close_partitions(partitions)
        finally:
            self.pipeline.lock.release()

    def assign(self, partitions: set[int], epoch: int, generation: int) -> None:
        log.info("assigned partitions %s", sorted(partitions), extra={"generation": generation})
        self._refused -= partitions  # a refusal of the last revocation's final commit says nothing of this one
        for job in (self._prepare(partitions, epoch, generation), self._share_llm_limit(partitions)):
            task = asyncio.ensure_future(job)
            self._preparing.add(task)
            task.add_done_callback(self._preparing.discard)

    async def _share_llm_limit(self, partitions: set[int]) -> None:
        """Members share the LLM's rate limit by the partitions they own (`RateLimiter.set_share`)."""
        share = self.engine.share_llm_limit
        if share is None:
            return
        try:
            total = await self.bridge.partition_count()
            share(partitions, total)
            log.info("sharing the LLM rate limit by partitions: %s of %d", sorted(partitions), total)
        except (KafkaError, OSError) as exc:  # the limiter goes on sharing by the server's answers alone
            log.warning("cannot read the topic's partition count to share the LLM's limit: %s", exc)

    async def _prepare(self, partitions: set[int], epoch: int, generation: int) -> None:
        """Clear uncommitted and superseded output and rebuild dedup for new partitions, then let them be
        fetched; their files are named for `generation`."""
        delay = 0.5
        while not self._stopping and self.bridge.epoch == epoch:
            try:
                positions = await self.bridge.rewind(partitions)
                await self.pipeline.io(clear_uncommitted, self.location, self.topic, positions, generation)
                # A previous owner killed between its commit and its marker leaves the marker behind; catch it up.
                await self.pipeline.io(self.markers.advance, positions)
                async with self.pipeline.lock:
                    if self.bridge.epoch != epoch:
                        return
                    await self.pipeline.recall_dedup(positions)
                    for p, position in positions.items():
                        self.pipeline.open(p, position, generation)
                log.info("partitions ready at offsets %s", positions, extra={"positions": positions})
                self.pipeline.wake.set()
                return
            except (KafkaError, OSError) as exc:
                log.warning("preparing partitions %s failed, retrying in %.1fs: %s", sorted(partitions), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


EngineFactory = Callable[[], AbstractAsyncContextManager[Engine]]


async def _run(config: KafkaRunConfig, engine_factory: EngineFactory) -> int:
    # asyncio.run joins the default executor's threads at exit without a timeout: daemon threads instead, so a
    # blocking call that never returns (a dead-letter flush to a broker that is away) cannot keep us alive.
    asyncio.get_running_loop().set_default_executor(
        DaemonExecutor(min(32, (os.cpu_count() or 1) + 4), "webr-default", join_timeout_s=2.0)
    )
    metrics = ConsumerMetrics(CollectorRegistry())
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(engine_factory())
        if config.kafka.metrics_port is not None:
            if engine.llm_stats is not None:
                metrics.registry.register(LLMStatsCollector(engine.llm_stats))
            serve(config.kafka.metrics_port, metrics.registry)
        try:
            return await KafkaRuntime(config, engine, metrics).run()
        except (KafkaError, OSError, PipelineError) as exc:  # start-up: brokers or output unreachable
            log.error("cannot start consuming %s: %s", config.kafka.topic, exc)
            return 1


def run_kafka(config: KafkaRunConfig, engine_factory: EngineFactory) -> int:
    """Consume `config.kafka.topic` until stopped; the exit code of `python -m streamer.consume`.

    `engine_factory()` is an async context manager yielding the engine, entered on the runtime's event loop (so
    an HTTP client session can live inside it). 0: stopped cleanly with everything committed; 1: stopped on an
    error or with offsets left uncommitted (the next run reprocesses them).
    """
    return asyncio.run(_run(config, engine_factory))
