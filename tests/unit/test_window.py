import asyncio

import pytest

from core.outcomes import Outcome
from streamer.window import OrderedWindow


async def _after(delay: float, value: str) -> Outcome:
    await asyncio.sleep(delay)
    return value  # type: ignore[return-value]


async def test_outcomes_leave_in_push_order() -> None:
    window = OrderedWindow(max_running=10)
    for offset, delay in enumerate([0.05, 0.0, 0.02, 0.0]):
        window.push(offset, _after(delay, f"o{offset}"))
    window.push(4, "invalid")  # type: ignore[arg-type]
    out: list[tuple[int, Outcome]] = []
    while len(window):
        await window.wait()
        out.extend(window.pop_ready())
    assert out == [(0, "o0"), (1, "o1"), (2, "o2"), (3, "o3"), (4, "invalid")]


async def test_room_is_bounded_by_running_and_buffered() -> None:
    window = OrderedWindow(max_running=2, max_buffered=3)
    window.push(0, _after(0.05, "slow head"))
    window.push(1, _after(0.0, "fast"))
    assert not window.has_room
    await window.wait()
    assert window.running == 1 and window.has_room
    window.push(2, _after(0.0, "fast"))
    await window.wait()
    assert len(window) == 3 and not window.has_room  # finished work waits behind the head, bounded
    await window.cancel()


async def test_offsets_must_increase_and_cancel_reports_dropped() -> None:
    window = OrderedWindow(max_running=4)
    window.push(5, _after(10, "never"))
    with pytest.raises(ValueError, match="pushed after"):
        window.push(5, _after(0, "dup"))
    assert await window.cancel() == [5]
    assert len(window) == 0
