"""Fast checks of what bounds a stop: daemon worker threads, and the settings of the rebalance grace period."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from pydantic import ValidationError

from streamer.kafka.settings import KafkaSettings
from streamer.threads import DaemonExecutor
from tests.support.documents import REPO


def test_daemon_executor_runs_calls_and_reports_what_it_abandons() -> None:
    executor = DaemonExecutor(2, "t", join_timeout_s=0.2)
    assert sorted(executor.map(lambda x: x * x, range(5))) == [0, 1, 4, 9, 16]
    release = time.monotonic() + 5
    blocked = executor.submit(lambda: time.sleep(max(0.0, release - time.monotonic())))
    time.sleep(0.1)
    assert executor.running == ["test_daemon_executor_runs_calls_and_reports_what_it_abandons.<locals>.<lambda>"]
    started = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 1, "shutdown waited for a blocked call"
    assert not blocked.done()
    with pytest.raises(RuntimeError):
        executor.submit(print)


def test_a_blocked_call_on_the_default_executor_does_not_keep_the_process_alive() -> None:
    """What `run_kafka` relies on: asyncio.run and the interpreter's exit would join a ThreadPoolExecutor's stuck
    worker forever (the check below hangs with one); a DaemonExecutor's is abandoned."""
    script = textwrap.dedent(
        """
        import asyncio, time
        from streamer.threads import DaemonExecutor

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_default_executor(DaemonExecutor(4, "d", join_timeout_s=0.5))
            loop.run_in_executor(None, time.sleep, 3600)
            await asyncio.sleep(0.1)

        asyncio.run(main())
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10
    assert "abandoning sleep on d" in done.stderr


def test_rebalance_grace_must_fit_in_half_the_max_poll_interval() -> None:
    assert KafkaSettings(topic="t").rebalance_grace_s == 5.0
    KafkaSettings(topic="t", rebalance_grace_s=150, max_poll_interval_ms=300_000)
    with pytest.raises(ValidationError, match="half of --max-poll-interval-ms"):
        KafkaSettings(topic="t", rebalance_grace_s=20, max_poll_interval_ms=30_000)
