"""Groups that grow and shrink while they work: `--stop-after-idle` never strands a document, every member exits 0
soon after the topic is drained, and a rebalance lets running documents finish instead of paying for them twice.

All through `python -m streamer.consume` processes, the tansu broker and the fake OpenAI server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.fakeopenai import FakeOpenAI
from devtools.tansu import KafkaTopic, TansuBroker, create_topic
from streamer.kafka.runtime import (
    DEAD_LETTERS_CLOSE_TIMEOUT_S,
    LEAVE_TIMEOUT_S,
    STOP_COMMIT_TIMEOUT_S,
    TASKS_STOP_TIMEOUT_S,
)
from tests.kafka.helpers import SESSION_TIMEOUT_MS, Consumer, Output, documents, read_output, wait_committed
from tests.kafka.scenarios import join_then_drain, last_commit_time, llm_attempts, log_time, wait_exits, wedge_group

pytestmark = pytest.mark.timeout(300)

STOP_BOUND_S = STOP_COMMIT_TIMEOUT_S + LEAVE_TIMEOUT_S + DEAD_LETTERS_CLOSE_TIMEOUT_S + TASKS_STOP_TIMEOUT_S + 2 + 5
"""Everything a stopping process still does, each step bounded: the last commit, stopping the loops, leaving the
group, closing the dead-letter producer, the default executor's threads (2 s), plus 5 s to start Python's exit."""
EXIT_BOUND_S = 40.0
"""How long after the topic is drained (plus the idle time) the last member may still be there: leaving one after
another costs a rebalance each (tansu delays every follower's rejoin by 3 s, and took up to 8 s on a loaded
machine), plus a heartbeat to confirm and one to linger, and the group's leader leaves last, one rebalance after
the last other member (measured: up to 36.7 s with two busy loops on two cores, 15 s before the leader left last
on an idle one)."""


def assert_exactly_once(out: Output, docs: list[tuple[bytes, bytes]]) -> None:
    """Every document once (row or rejection), every offset once."""
    assert max(out.sources.values()) == 1, [s for s, n in out.sources.items() if n > 1]
    assert max(out.doc_ids.values()) == 1, [d for d, n in out.doc_ids.items() if n > 1]
    missing = {k.decode() for k, _ in docs} - set(out.doc_ids)
    assert not missing, f"{len(missing)} documents never processed"
    assert len(out.rows) + len(out.rejected) == len(docs)


def test_four_members_drain_six_uneven_partitions_and_all_exit_zero(
    make_topic: Callable[..., KafkaTopic],
    fake_llm_factory: Callable[..., FakeOpenAI],
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """Members with little work finish first and leave (the group's leader last of all: at least one of the two
    members with little work is not the leader); each leaving revokes the others' partitions. Each member must
    still see its (new) partitions through to their end before it leaves, so the group processes all 240
    documents exactly once and every member exits 0."""
    topic = make_topic(6)
    llm = fake_llm_factory(latency_s=(0.1, 0.4))
    sizes = [5, 10, 15, 20, 80, 110]  # range-assigned to four members: 15, 35, 80 and 110 documents
    docs: list[tuple[bytes, bytes]] = []
    for p, n in enumerate(sizes):
        part = documents(n, start=len(docs))
        topic.produce(part, partition=p)  # type: ignore[arg-type]
        docs += part
    out_uri = str(tmp_path / "out")
    flags = ("--stop-after-idle", "3", "--max-in-flight-docs", "8")
    members = [Consumer(topic, out_uri, llm.url, tmp_path, *flags, name=f"m{i}") for i in range(4)]
    consumers += [m.start() for m in members]

    exits = wait_exits(members, timeout=240)
    assert {name: rc for name, (rc, _) in exits.items()} == {m.name: 0 for m in members}, [
        m.log()[-2000:] for m in members if exits[m.name][0] != 0
    ]
    assert_exactly_once(read_output(out_uri, topic.name), docs)
    assert topic.committed() == dict(enumerate(sizes))
    first_exit = min(t for _, t in exits.values())
    assert first_exit < last_commit_time(members), "every member left at the end: no member left while others worked"
    for m in members:  # each assignment hands the member's partitions to its LLM rate limiter
        assigned = [e["msg"] for e in m.events() if e["msg"].startswith("assigned partitions ")]
        shared = [e["msg"] for e in m.events() if e["msg"].startswith("sharing the LLM rate limit by partitions")]
        assert [a.removeprefix("assigned partitions ") for a in assigned if a != "assigned partitions []"] == [
            s.split(": ")[1].rsplit(" of ", 1)[0] for s in shared if not s.endswith(": [] of 6")
        ], (assigned, shared)
        assert all(s.endswith(" of 6") for s in shared), shared


def test_members_joining_one_after_another_then_draining_exit_soon_after_the_topic_is_drained(
    kafka_topic: KafkaTopic, fake_llm_factory: Callable[..., FakeOpenAI], tmp_path: Path
) -> None:
    """Three members join a few seconds apart while the first works, then a fourth (3 partitions: one owns
    nothing). All drain with --stop-after-idle: every document once, every member exits 0, and none stays longer
    than the idle time plus a bound after the group committed the last offset."""
    idle_s = 4.0
    llm = fake_llm_factory(latency_s=(0.2, 0.6))
    run = join_then_drain(kafka_topic, llm.url, tmp_path, idle_s=idle_s)

    assert {name: rc for name, (rc, _) in run.exits.items()} == {m.name: 0 for m in run.members}, [
        m.log()[-2000:] for m in run.members if run.exits[m.name][0] != 0
    ]
    assert max(run.started.values()) < run.drained, "drained before the last member joined"
    assert_exactly_once(run.out, run.docs)
    assert sum(kafka_topic.committed().values()) == len(run.docs)  # type: ignore[arg-type]
    late = {name: round(d, 1) for name, d in run.exit_delays.items() if d > idle_s + EXIT_BOUND_S}
    assert not late, f"seconds after the last commit: {late}"


def test_idle_members_leave_before_their_leader_and_the_group_takes_new_members_after(
    kafka_topic: KafkaTopic,
    fake_llm_factory: Callable[..., FakeOpenAI],
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """Three members drain a topic and become idle at about the same time. The leader stays until the others have
    left (tansu 0.6 never completes a rebalance again if a leader leaves while the group is forming after another
    member left), then leaves alone; the group is then still usable: a member started afterwards is assigned and
    drains it."""
    llm = fake_llm_factory(latency_s=(0.05, 0.2))
    docs = documents(60)
    kafka_topic.produce(docs)
    out_uri = str(tmp_path / "out")
    flags = ("--stop-after-idle", "2", "--max-in-flight-docs", "8")
    members = [Consumer(kafka_topic, out_uri, llm.url, tmp_path, *flags, name=f"m{i}") for i in range(3)]
    consumers += [m.start() for m in members]
    exits = wait_exits(members, timeout=120)
    assert {name: rc for name, (rc, _) in exits.items()} == {m.name: 0 for m in members}
    # The member that led the group's last generation of several members leaves last. Whether it also logs that
    # it waits for the others is timing: when they confirm and leave before its own idle heartbeat comes back, it
    # is alone (and leads only itself) by the time it could wait (seen once in about eight full runs).
    led = sorted(
        (log_time(e), m.name)
        for m in members
        for e in m.events()
        if e["msg"].startswith("leading the group") and e["members"] > 1
    )
    assert led, {m.name: m.log()[-4000:] for m in members}
    last_leader = led[-1][1]
    assert exits[last_leader][1] == max(t for _, t in exits.values()), (led, exits)
    waited = [m.name for m in members if "idle, and leading" in m.log()]
    assert waited in ([], [last_leader]), (waited, led)

    more = documents(6, start=len(docs))
    kafka_topic.produce(more)
    late = Consumer(kafka_topic, out_uri, llm.url, tmp_path, *flags, name="late")
    consumers.append(late.start())
    assert late.wait(60) == 0, late.log()[-3000:]
    assert_exactly_once(read_output(out_uri, kafka_topic.name), docs + more)


def test_a_member_never_given_a_stable_assignment_warns_and_exits_1(
    kafka_topic: KafkaTopic, fake_llm_factory: Callable[..., FakeOpenAI], tmp_path: Path, consumers: list[Consumer]
) -> None:
    """In a group tansu never rebalances again (wedged by plain kafka-python members, see `wedge_group`), a member
    cannot get partitions. It must not wait silently for good: it warns, and after the max poll interval plus three
    session timeouts it stops with exit 1."""
    kafka_topic.produce(documents(3))
    wedge_group(kafka_topic)
    llm = fake_llm_factory(latency_s=0.05)
    flags = ("--stop-after-idle", "2", "--max-poll-interval-ms", "12000", "--rebalance-grace-s", "1")
    member = Consumer(kafka_topic, str(tmp_path / "out"), llm.url, tmp_path, *flags)
    consumers.append(member.start())
    started = time.monotonic()
    rc = member.wait(90)
    took = time.monotonic() - started
    log = member.log()
    print(f"exit {rc} after {took:.1f}s")
    assert rc == 1, log[-3000:]
    assert "no stable group membership for" in log and "still rebalancing" in log, log[-3000:]
    give_up_s = 12 + 3 * SESSION_TIMEOUT_MS / 1000
    assert give_up_s < took < give_up_s + STOP_BOUND_S, log[-3000:]
    assert not any(kafka_topic.committed().values())


@pytest.mark.parametrize("grace_s", [0, 8])
def test_rebalance_with_work_in_flight_lets_running_documents_finish(
    grace_s: int,
    kafka_topic: KafkaTopic,
    fake_llm_factory: Callable[..., FakeOpenAI],
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """A second member joins while the first has documents in their LLM calls (1 s each). With a grace period the
    revocation waits for them: nothing is cancelled and every LLM call the server answered is in the output. With
    none they are cancelled and their calls redone by the next owner (what the grace period saves). Either way no
    document is lost or doubled."""
    llm = fake_llm_factory(latency_s=1.0)
    docs = documents(60)
    kafka_topic.produce(docs)
    out_uri = str(tmp_path / "out")
    flags = ("--stop-after-idle", "3", "--max-in-flight-docs", "8", "--rebalance-grace-s", str(grace_s))
    first = Consumer(kafka_topic, out_uri, llm.url, tmp_path, *flags, name="first")
    second = Consumer(kafka_topic, out_uri, llm.url, tmp_path, *flags, name="second")
    consumers += [first.start(), second]
    wait_committed(kafka_topic, 5)
    second.start()
    exits = wait_exits([first, second], timeout=200)
    assert exits["first"][0] == 0 and exits["second"][0] == 0, (first.log()[-2000:], second.log()[-2000:])

    out = read_output(out_uri, kafka_topic.name)
    assert_exactly_once(out, docs)
    revokes = [e for e in first.events() if e["msg"].startswith("revoked partitions [")]
    finished = sum(e["finished"] for e in revokes)
    cancelled = sum(e["cancelled"] for e in revokes)
    assert finished + cancelled > 0, "the first member gave up no partition with work in flight"
    answered = len(llm.records)
    discarded = answered - llm_attempts(out)
    print(
        f"grace {grace_s}s: {finished} running documents finished, {cancelled} cancelled; "
        f"LLM calls answered {answered}, in the output {llm_attempts(out)}, discarded {discarded}"
    )
    if grace_s:
        assert finished > 0 and cancelled == 0, (finished, cancelled)
        assert discarded == 0, f"{discarded} LLM calls answered but not in the output"
    else:
        assert finished == 0 and cancelled > 0, (finished, cancelled)
        assert discarded > 0, "cancelled documents must have made calls that are redone"


def test_a_member_told_to_stop_while_the_broker_is_gone_exits_within_a_bound(
    persistent_broker: TansuBroker,
    fake_llm_factory: Callable[..., FakeOpenAI],
    tmp_path: Path,
    consumers: list[Consumer],
) -> None:
    """SIGTERM while the broker is down: the last commit, leaving the group and closing the dead-letter producer
    cannot reach it. Each is bounded, so the process is gone within the grace period plus those bounds (exit 1:
    offsets were left uncommitted), instead of waiting for a broker that may never come back."""
    llm = fake_llm_factory(latency_s=(0.05, 0.2))
    topic = create_topic(persistent_broker, 3)
    topic.produce([*documents(60), (b"bad", b"not json")])
    consumer = Consumer(topic, str(tmp_path / "out"), llm.url, tmp_path, "--grace-period-s", "2")
    consumers.append(consumer.start())
    wait_committed(topic, 10)
    persistent_broker.stop()
    time.sleep(1)
    stopped = time.monotonic()
    consumer.terminate()
    rc = consumer.wait(120)
    took = time.monotonic() - stopped
    print(f"exit {rc} {took:.1f}s after SIGTERM")
    assert took < 2 + STOP_BOUND_S, consumer.log()[-3000:]
