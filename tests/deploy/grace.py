"""How long a consumer may take to stop after SIGTERM, from the runtime's own bounds."""

from __future__ import annotations

from streamer.kafka import runtime

DEAD_LETTERS_CLOSE_SLACK_S = 2.0
"""`KafkaRuntime._close_dead_letters` waits the producer's close timeout plus 2 s."""
EXECUTOR_JOIN_S = 2.0
"""`_run` installs a `DaemonExecutor` joined for at most 2 s when asyncio.run shuts it down."""


def worst_stop_s(grace_period_s: float) -> float:
    """Grace period, last commit, the fetch/commit loops, leaving the group, dead letters, the thread pool."""
    return (
        grace_period_s
        + runtime.STOP_COMMIT_TIMEOUT_S
        + runtime.TASKS_STOP_TIMEOUT_S
        + runtime.LEAVE_TIMEOUT_S
        + runtime.DEAD_LETTERS_CLOSE_TIMEOUT_S
        + DEAD_LETTERS_CLOSE_SLACK_S
        + EXECUTOR_JOIN_S
    )
