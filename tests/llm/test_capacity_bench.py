"""The capacity bench's three clients (our CLI, Curator stage by stage, 50 threads) on a few documents against a
fast fake server, so the harness keeps working; timings are the bench's business, not checked here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import capacity
from bench.webr_chain import load_jobs

pytestmark = pytest.mark.slow  # every client is a process of its own; Curator alone takes seconds to import


def _chain_calls(tmp_path: Path, docs: int) -> int:
    """Calls the WebR chain makes for these documents when nothing is rejected: 3 per WI, 4 per WR."""
    source = tmp_path / "plan.jsonl"
    capacity.write_documents(source, docs)
    return sum(3 if job.is_wi else 4 for job in load_jobs(source))


def test_each_client_sends_the_same_chain_and_every_document_ends(tmp_path: Path) -> None:
    args = ["--docs", "5", "--runs", "1", "--capacity", "4", "--latency", "0.01", "--latency-per-token", "0"]
    medians = capacity.main([*args, "--work-dir", str(tmp_path / "work")])
    expected = _chain_calls(tmp_path, 5)
    assert [m.client for m in medians] == list(capacity.CLIENTS)
    for m in medians:
        assert (m.docs_ended, m.rejected, m.calls) == (5, 0, expected), m.client
        assert m.bound_s is not None and m.bound_s > 0
        assert m.busy_share is not None and 0 < m.busy_share <= 1
        assert m.tail_idle_s is not None and 0 <= m.tail_idle_s <= m.wall_s
        assert m.binding_share is None
    assert set(medians[0].ratios) == {"curator", "threads"}


def test_rate_limited_server_reports_throughput_against_the_binding_limit(tmp_path: Path) -> None:
    args = ["--docs", "5", "--runs", "1", "--clients", "ours,threads", "--rpm", "300", "--latency", "0.01"]
    medians = capacity.main([*args, "--work-dir", str(tmp_path / "work")])
    for m in medians:
        assert m.docs_ended == 5, m.client
        assert m.binding_share is not None and m.binding_share > 0
        assert m.busy_share is None  # no bounded batch: the limits bind, not the slots
        assert m.bound_s is not None and m.bound_s > 0


@pytest.mark.parametrize(
    ("service", "idle"),
    [
        ([(0.0, 1.0), (0.0, 1.0)], 0.0),  # both slots busy to the end
        ([(0.0, 1.0), (0.0, 3.0)], 1.0),  # one slot idle from 1 s to 3 s: a whole 2-slot server for 1 s
        ([(0.0, 2.0), (1.0, 3.0)], 0.5),  # full from 1 s to 2 s, then one slot idle for 1 s
        ([(0.0, 1.0), (0.0, 1.0), (1.5, 2.0)], 0.75),  # a gap where both stood idle counts too
    ],
)
def test_tail_idle_counts_the_idle_slots_after_the_last_instant_all_were_busy(
    service: list[tuple[float, float]], idle: float
) -> None:
    assert capacity.tail_idle(service, 2) == pytest.approx(idle)
