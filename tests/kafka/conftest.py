"""Fixtures of the Kafka end-to-end tests."""

from collections.abc import Iterator

import pytest

from tests.kafka.helpers import Consumer


@pytest.fixture
def consumers() -> Iterator[list[Consumer]]:
    """Consumer processes a test starts; stopped at teardown if still running."""
    started: list[Consumer] = []
    yield started
    for c in started:
        c.stop()
