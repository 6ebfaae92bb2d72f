"""The consumer process: lifecycle, rebalances, backpressure, idle stop, and the one place offsets are committed.

    run_kafka(settings, processor_factory) -> exit code

Two tasks share the asyncio loop: the fetch loop polls the consumer (on its own thread) and queues records; the
pump starts documents, writes finished outcomes in offset order and commits what is durable. Partitions with a
backlog are paused, and polling goes on so the member stays in the group. SIGTERM/SIGINT stop fetching, give
running documents `grace_period_s`, flush, commit and leave the group; a second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from consumers.exceptions import PipelineError
from streamer.kafka.admin import ensure_topic, partition_count
from streamer.kafka.bridge import ConsumerBridge
from streamer.kafka.deadletters import DeadLetterError, DeadLetters
from streamer.kafka.pipeline import Pipeline, Processor
from streamer.kafka.recovery import clear_uncommitted, committed_rows, dedup_ranges
from streamer.kafka.settings import KafkaRunConfig
from streamer.metrics import ConsumerMetrics, LLMStatsCollector, llm_stats_of, serve
from streamer.sinks.parquet import ParquetSink
from streamer.storage import resolve

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 100
TICK_S = 0.5
"""How often the pump wakes without news: idle checks and retries of failed commits."""


class FatalError(Exception):
    """Something the runtime cannot recover from in-process; nothing more is committed."""


class KafkaRuntime:
    """One consumer process of the group. Implements the bridge's `RebalanceHandler`."""

    def __init__(self, config: KafkaRunConfig, processor: Processor, metrics: ConsumerMetrics) -> None:
        self.config = config
        self.kafka = config.kafka
        assert self.kafka.topic is not None and self.kafka.bootstrap_servers is not None
        self.topic: str = self.kafka.topic
        self.processor = processor
        self.metrics = metrics
        self.location = resolve(config.output, s3_endpoint_url=config.s3_endpoint_url, create=True)
        self.sink = ParquetSink(self.location, config.roll, retry_deadline_s=None)
        self.pipeline: Pipeline
        self.bridge: ConsumerBridge
        self._stopping = False
        self._forced = False
        self._fatal: BaseException | None = None
        self._last_activity = 0.0
        self._assigned_once = False
        self._commit_wanted = asyncio.Event()
        self._preparing: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            await loop.run_in_executor(None, self.sink.setup)
            dead_letters = await loop.run_in_executor(None, self._dead_letters)
            stack.callback(dead_letters.close)
            self.pipeline = Pipeline(self.topic, self.processor, self.sink, dead_letters, self.metrics,
                                     max_in_flight=self.config.max_in_flight_docs)
            stack.callback(self.pipeline.close)
            self.bridge = ConsumerBridge(self.kafka, self, max_poll_records=min(500, self.config.max_in_flight_docs))
            await self.bridge.start()
            stack.push_async_callback(self.bridge.close)
            self._install_signals(loop)
            self._last_activity = loop.time()
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
                await asyncio.gather(fetcher, committer, return_exceptions=True)
                for task in list(self._preparing):
                    task.cancel()
                if self._fatal is not None:
                    await self.pipeline.close_partitions(list(self.pipeline.parts))
        return 1

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
            log.info("%s: stop fetching, finish in-flight documents (grace %.0fs), flush, commit",
                     sig.name, self.kafka.grace_period_s)
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
            try:
                records, highwaters = await self.bridge.poll(self.pipeline.fetchable(), POLL_TIMEOUT_MS)
            except KafkaError as exc:
                log.warning("poll failed, retrying: %s", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception as exc:
                self._fail(exc)
                return
            fresh = sum(self.pipeline.accept(p, recs) for p, recs in records.items())
            if records:
                log.debug("fetched %s", {p: (recs[0].offset, recs[-1].offset) for p, recs in records.items()})
            if fresh:
                self._last_activity = loop.time()
                self.pipeline.wake.set()
            for p, hw in highwaters.items():
                state = self.pipeline.parts.get(p)
                if state is not None:
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
            if self._idle_expired():
                await self._commit(flush=True)
                if not self.pipeline.uncommitted:
                    log.info("idle for %.0fs with everything committed: exiting", self.kafka.stop_after_idle)
                    return 0
            await self._wait(TICK_S)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pipeline.wake.wait(), seconds)
        self.pipeline.wake.clear()

    def _idle_expired(self) -> bool:
        limit = self.kafka.stop_after_idle
        # Not before the group has answered: a restart may wait out a dead member's session first.
        if limit is None or not self._assigned_once or self.pipeline.busy or self._preparing:
            return False
        return asyncio.get_running_loop().time() - self._last_activity >= limit

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
        async with self.pipeline.lock:
            epoch = self.bridge.epoch
            offsets = await self.pipeline.checkpoint(flush=flush)
        if not offsets:
            return True
        try:
            await self.pipeline.deliver_dead_letters()
        except DeadLetterError as exc:
            log.warning("not committing yet: %s", exc)
            return False
        try:
            done = await self.bridge.commit(offsets, epoch)
        except KafkaError as exc:
            self.metrics.commits.labels("failed").inc()
            log.warning("commit failed, will retry: %s", exc)
            return False
        self.pipeline.committed(done)
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
                    log.info("partition %d: %d unfinished records left for the next run", p,
                             len(dropped) + len(state.backlog))
                state.backlog.clear()
        committed = await self._commit(flush=True)
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

    async def revoke(self, partitions: set[int]) -> dict[int, int]:
        if not partitions:
            return {}
        self.metrics.rebalances.labels("revoked").inc()
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
            await self.pipeline.close_partitions(partitions)
            self.pipeline.lock.release()
        if offsets:
            try:
                await self.pipeline.deliver_dead_letters()
            except DeadLetterError as exc:
                log.warning("revoking %s without a commit: %s", sorted(partitions), exc)
                offsets = {}
        log.info("revoked partitions %s, committing %s", sorted(partitions), offsets)
        return offsets

    def revoke_committed(self, offsets: dict[int, int], ok: bool) -> None:
        self.metrics.commits.labels("ok" if ok else "failed").inc()
        if ok:
            self.pipeline.committed(offsets)

    async def lose(self, partitions: set[int]) -> None:
        if not partitions:
            return
        self.metrics.rebalances.labels("lost").inc()
        log.warning("lost partitions %s (membership expired): dropping their uncommitted work", sorted(partitions))
        await self._locked()
        try:
            await self.pipeline.close_partitions(partitions)
        finally:
            self.pipeline.lock.release()

    def assign(self, partitions: set[int], epoch: int) -> None:
        log.info("assigned partitions %s", sorted(partitions))
        self._assigned_once = True
        self._last_activity = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(self._prepare(partitions, epoch))
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    async def _prepare(self, partitions: set[int], epoch: int) -> None:
        """Clear uncommitted output and rebuild dedup for new partitions, then let them be fetched."""
        delay = 0.5
        while not self._stopping and self.bridge.epoch == epoch:
            try:
                positions = await self.bridge.rewind(partitions)
                await self.pipeline.io(clear_uncommitted, self.location, self.topic, positions)
                async with self.pipeline.lock:
                    if self.bridge.epoch != epoch:
                        return
                    await self._rebuild_dedup(positions)
                    for p, position in positions.items():
                        self.pipeline.open(p, position)
                log.info("partitions ready at offsets %s", positions, extra={"positions": positions})
                self._last_activity = asyncio.get_running_loop().time()
                self.pipeline.wake.set()
                return
            except (KafkaError, OSError) as exc:
                log.warning("preparing partitions %s failed, retrying in %.1fs: %s", sorted(partitions), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _rebuild_dedup(self, positions: dict[int, int]) -> None:
        """Load committed rows not yet in the dedup index; start over if it holds uncommitted decisions."""
        dedup = getattr(self.processor, "dedup", None)
        if dedup is None or not hasattr(dedup, "add_existing"):
            return
        indexed = self.pipeline.indexed
        reset, ranges = dedup_ranges(indexed, positions)
        if reset:
            log.warning("dedup index holds decisions that were never committed: rebuilding it from the output")
            dedup = type(dedup)(dedup.settings)
            self.processor.dedup = dedup  # type: ignore[attr-defined]
            indexed.clear()
        rows = await self.pipeline.io(lambda: list(committed_rows(self.location, self.topic, ranges))) if ranges else []
        for i, (branch, request, page_hash) in enumerate(rows):
            dedup.add_existing(branch, request, page_hash)
            if i % 256 == 255:
                await asyncio.sleep(0)
        indexed.update(positions)
        if rows:
            log.info("dedup index: %d committed rows loaded", len(rows))


ProcessorFactory = Callable[[], AbstractAsyncContextManager[Any] | Any]


def webr_processor(settings: Any) -> ProcessorFactory:
    """The production processor for `run_kafka`: `settings.llm()`'s client driving `settings.webr()`'s engine."""

    @contextlib.asynccontextmanager
    async def open_processor() -> AsyncIterator[Any]:
        from consumers.llm.client import OpenAIChatClient  # the HTTP stack only when consuming
        from consumers.webr.processor import DocumentProcessor

        async with OpenAIChatClient(settings.llm()) as llm:
            yield DocumentProcessor(llm, settings.webr())

    return open_processor


async def _run(settings: Any, processor_factory: ProcessorFactory) -> int:
    config = KafkaRunConfig.from_settings(settings)
    metrics = ConsumerMetrics(CollectorRegistry())
    async with AsyncExitStack() as stack:
        made = processor_factory()
        processor = await stack.enter_async_context(made) if hasattr(made, "__aenter__") else made
        if config.kafka.metrics_port is not None:
            metrics.registry.register(LLMStatsCollector(llm_stats_of(processor)))
            serve(config.kafka.metrics_port, metrics.registry)
        try:
            return await KafkaRuntime(config, processor, metrics).run()
        except (KafkaError, OSError, PipelineError) as exc:  # start-up: brokers or output unreachable
            log.error("cannot start consuming %s: %s", config.kafka.topic, exc)
            return 1


def run_kafka(settings: Any, processor_factory: ProcessorFactory) -> int:
    """Consume `settings.topic` until stopped; the exit code of `python -m streamer.consume`.

    `processor_factory()` returns the processor, or an async context manager yielding it (entered on the
    runtime's event loop, so an HTTP client session can live inside it). 0: stopped cleanly with everything
    committed; 1: stopped on an error or with offsets left uncommitted (the next run reprocesses them).
    """
    return asyncio.run(_run(settings, processor_factory))
