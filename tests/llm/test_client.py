"""The client against the fake OpenAI server over real HTTP: results, retries, error classes, limits, secrecy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from consumers.llm.client import OpenAIChatClient
from consumers.llm.settings import LLMSettings, Sampling
from consumers.llm.types import ErrorKind, LLMCallError
from devtools.fakeopenai import REFUSAL_TEXT, FakeOpenAI, Fault

KEY = "sk-test-7f3a9c1d2e5b8a4f"
MessagesFor = Callable[[str], list[dict[str, str]]]


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]


def _settings(server: FakeOpenAI, **changes: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "base_url": server.url,
        "api_key": KEY,
        "model": "gpt-4o-mini",
        "request_timeout_s": 5.0,
        "sampling": Sampling(temperature=1.0),
    }
    values.update(changes)
    return LLMSettings(**values)


@pytest.fixture
async def client(fake_llm: FakeOpenAI) -> AsyncIterator[OpenAIChatClient]:
    async with OpenAIChatClient(_settings(fake_llm), backoff_initial_s=0.05, backoff_max_s=0.2) as c:
        yield c


async def test_result_matches_what_the_server_answered(client: OpenAIChatClient, fake_llm: FakeOpenAI) -> None:
    result = await client.chat(_messages("Tell me about rivers."))
    [record] = fake_llm.records
    assert result.text == record.reply
    assert (result.prompt_tokens, result.completion_tokens) == (record.prompt_tokens, record.completion_tokens)
    assert result.attempts == 1
    assert result.finish_reason == "stop"
    assert record.messages == _messages("Tell me about rivers.")
    # Only the sampling fields that are set are sent.
    assert record.params == {"model": "gpt-4o-mini", "temperature": 1.0}
    assert client.stats.calls_ok == 1
    assert client.stats.completion_tokens == record.completion_tokens
    assert client.stats.latency_count == 1
    assert sum(client.stats.latency_buckets) == 1
    assert client.stats.in_flight == 0


async def test_429_is_retried_after_retry_after(client: OpenAIChatClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.rate_limit(retry_after_s=1.0))
    started = time.monotonic()
    result = await client.chat(_messages("hello"))
    elapsed = time.monotonic() - started
    assert result.attempts == 2
    assert 0.95 <= elapsed < 4.0  # waited for the server's hint, not the 0.05 s backoff
    first, second = fake_llm.records
    assert first.status == 429 and second.status == 200
    assert second.t - first.t >= 0.95
    assert client.stats.rate_limited_429 == 1
    assert client.stats.retries == 1
    assert client.stats.attempts == 2


async def test_429_cooldown_holds_the_other_calls(fake_llm: FakeOpenAI) -> None:
    fake_llm.configure(latency_s=0.05)
    fake_llm.inject(Fault.rate_limit(retry_after_s=1.0))
    # One slot: the refused call frees it at once (its backoff holds no slot), so only the shared cooldown can
    # keep the queued calls from going straight out.
    async with OpenAIChatClient(_settings(fake_llm, max_concurrency=1), backoff_initial_s=0.05) as client:
        await asyncio.gather(*(client.chat(_messages(f"call {i}")) for i in range(4)))
    refused, *later = fake_llm.records
    assert refused.status == 429
    assert len(later) == 4  # the three others and the retry
    assert all(r.t >= refused.t + 0.95 for r in later)


async def test_server_errors_then_success(client: OpenAIChatClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.server_error(503))
    fake_llm.inject(Fault.server_error(502))
    result = await client.chat(_messages("hello"))
    assert result.attempts == 3
    assert [r.status for r in fake_llm.records] == [503, 502, 200]
    assert client.stats.retries == 2


async def test_timeout_is_transient(fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.timeout(hang_s=10.0))
    settings = _settings(fake_llm, request_timeout_s=0.5)
    async with OpenAIChatClient(settings, backoff_initial_s=0.05) as client:
        started = time.monotonic()
        result = await client.chat(_messages("hello"))
    assert result.attempts == 2
    assert 0.45 <= time.monotonic() - started < 5.0


async def test_give_up_after_rejects_a_call_still_timing_out(fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.timeout(hang_s=10.0), times=10)
    settings = _settings(fake_llm, request_timeout_s=0.3, give_up_after_s=0.5)
    async with OpenAIChatClient(settings, backoff_initial_s=0.05) as client:
        with pytest.raises(LLMCallError) as info:
            await client.chat(_messages("hello"))
    assert info.value.kind is ErrorKind.TRANSIENT
    assert info.value.attempts == 3, "the deadline counts from the first failure, 0.3 s in: two more attempts fit"


async def test_give_up_after_does_not_count_the_wait_for_a_slot_of_a_healthy_replica(fake_llm: FakeOpenAI) -> None:
    # One slot, three calls of 0.4 s: the last waits 0.8 s for its first attempt, past a 0.5 s deadline. Nothing
    # failed, so nothing is given up.
    fake_llm.configure(latency_s=0.4)
    settings = _settings(fake_llm, max_concurrency=1, give_up_after_s=0.5, adaptive_concurrency=False)
    async with OpenAIChatClient(settings) as client:
        results = await asyncio.gather(*(client.chat(_messages(f"call {i}")) for i in range(3)))
    assert [r.attempts for r in results] == [1, 1, 1]
    assert client.stats.calls_failed == 0


async def test_give_up_after_counts_from_the_first_failure_while_no_replica_is_in_rotation(
    fake_llm_factory: Callable[..., FakeOpenAI],
) -> None:
    server = fake_llm_factory()
    url = server.url
    server.stop()
    settings = LLMSettings(
        base_url=url, give_up_after_s=0.5, eject_after_failures=1, health_check_initial_s=30.0, request_timeout_s=2.0
    )
    async with OpenAIChatClient(settings) as client:
        started = time.monotonic()
        with pytest.raises(LLMCallError) as info:
            await client.chat(_messages("hello"))
    assert (info.value.kind, info.value.reason, info.value.attempts) == (
        ErrorKind.TRANSIENT,
        "no replica in rotation",
        2,
    )
    assert 0.45 <= time.monotonic() - started < 1.5


async def test_bad_request_is_permanent_and_not_retried(client: OpenAIChatClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.bad_request())
    with pytest.raises(LLMCallError) as info:
        await client.chat(_messages("hello"))
    assert (info.value.kind, info.value.status, info.value.attempts) == (ErrorKind.PERMANENT, 400, 1)
    assert len(fake_llm.records) == 1
    assert client.stats.calls_failed == 1
    assert client.stats.failures_by_kind == {"permanent": 1}


async def test_wrong_key_is_permanent(fake_llm_factory: Callable[..., FakeOpenAI]) -> None:
    server = fake_llm_factory(api_key="sk-the-right-one")
    async with OpenAIChatClient(_settings(server)) as client:
        with pytest.raises(LLMCallError) as info:
            await client.chat(_messages("hello"))
    assert (info.value.kind, info.value.status, info.value.attempts) == (ErrorKind.PERMANENT, 401, 1)


@pytest.mark.parametrize(
    "fault",
    [Fault.garbage(), Fault.length(), Fault.empty(), Fault.content_filter()],
    ids=["garbage", "length", "empty", "content_filter"],
)
async def test_bad_output_is_retried_once_then_fails(
    client: OpenAIChatClient, fake_llm: FakeOpenAI, fault: Fault
) -> None:
    fake_llm.inject(fault, times=3)
    with pytest.raises(LLMCallError) as info:
        await client.chat(_messages("hello"))
    assert info.value.kind is ErrorKind.BAD_OUTPUT
    assert info.value.attempts == 2
    assert len(fake_llm.records) == 2


async def test_the_seed_is_sent_and_a_retry_after_bad_output_samples_with_the_next_one(
    client: OpenAIChatClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.inject(Fault.length())
    result = await client.chat(_messages("hello"), seed=41)
    assert result.attempts == 2
    assert [r.params["seed"] for r in fake_llm.records] == [41, 42]


async def test_a_server_error_is_retried_with_the_same_seed(client: OpenAIChatClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.server_error(503))
    await client.chat(_messages("hello"), seed=7)
    assert [r.params["seed"] for r in fake_llm.records if r.params] == [7, 7]


async def test_one_garbage_body_then_success(client: OpenAIChatClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.garbage())
    result = await client.chat(_messages("hello"))
    assert result.attempts == 2
    assert result.text == fake_llm.records[-1].reply


async def test_refusal_text_is_an_answer_not_an_error(client: OpenAIChatClient, fake_llm: FakeOpenAI) -> None:
    # Refusals are the engine's filter's business (it records why a pair is dropped), not a call failure.
    fake_llm.inject(Fault.refusal())
    result = await client.chat(_messages("hello"))
    assert result.text == REFUSAL_TEXT


async def test_server_errors_never_end_a_call_by_default(fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.server_error(500), times=9)
    settings = _settings(fake_llm, health_check_initial_s=0.02, health_check_max_s=0.1)
    async with OpenAIChatClient(settings, backoff_initial_s=0.02) as client:
        result = await client.chat(_messages("hello"))
    assert result.attempts == 10
    assert [r.status for r in fake_llm.records] == [500] * 9 + [200]
    # Three failures in a row took the endpoint out; each health check (its model list answers) let one trial
    # call through, which failed and took it out again, until the tenth attempt's answer kept it in.
    [replica] = client.stats.pool.replicas
    assert (replica.breaker.opened, replica.breaker.open, replica.breaker.probes) == (7, False, 7)


async def test_deadline_stops_retrying_before_a_long_wait(fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.rate_limit(retry_after_s=5.0))
    async with OpenAIChatClient(_settings(fake_llm, give_up_after_s=1.0)) as client:
        started = time.monotonic()
        with pytest.raises(LLMCallError) as info:
            await client.chat(_messages("hello"))
    assert (info.value.kind, info.value.attempts) == (ErrorKind.RATE_LIMITED, 1)
    assert time.monotonic() - started < 1.0


async def test_connection_refused_is_transient(fake_llm_factory: Callable[..., FakeOpenAI]) -> None:
    server = fake_llm_factory()
    url = server.url
    server.stop()  # nothing listens on that port any more
    settings = LLMSettings(base_url=url, api_key=KEY, give_up_after_s=0.3, request_timeout_s=2.0)
    async with OpenAIChatClient(settings, backoff_initial_s=0.05) as client:
        with pytest.raises(LLMCallError) as info:
            await client.chat(_messages("hello"))
    assert (info.value.kind, info.value.status) == (ErrorKind.TRANSIENT, None)
    assert info.value.attempts >= 2


@pytest.mark.parametrize(
    "garbage",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nX-" + b"a" * 10_000 + b": b\r\n\r\n", b"\x00\x00\x12\x04\x00\x00"],
    ids=["bad status line", "header too long", "not HTTP/1"],
)
async def test_a_reply_that_is_not_http_is_transient_and_counts_against_the_replica(garbage: bytes) -> None:
    # aiohttp gives an unreadable reply a status of its own (400, or 0): not the server's word, not permanent.
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(garbage)
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    settings = LLMSettings(
        base_url=f"http://127.0.0.1:{port}/v1",
        give_up_after_s=0.5,
        eject_after_failures=2,
        health_check_initial_s=30.0,
        adaptive_concurrency=False,
    )
    async with listener, OpenAIChatClient(settings, backoff_initial_s=0.05) as client:
        with pytest.raises(LLMCallError) as info:
            await client.chat(_messages("hello"))
        assert (info.value.kind, info.value.status) == (ErrorKind.TRANSIENT, None)
        assert info.value.attempts >= 2
        assert client.pool.replicas[0].breaker.stats.opened == 1, "a replica that cannot answer is out of rotation"


async def test_waiting_calls_are_served_by_priority(fake_llm: FakeOpenAI) -> None:
    fake_llm.configure(latency_s=0.2)
    async with OpenAIChatClient(_settings(fake_llm, max_concurrency=1)) as client:
        first = asyncio.create_task(client.chat(_messages("first"), priority=0))
        await asyncio.sleep(0.05)  # `first` holds the only slot; the others queue behind it
        rest = [asyncio.create_task(client.chat(_messages(f"p{p}"), priority=p)) for p in (9, 4, 6, 1)]
        await asyncio.gather(first, *rest)
    assert [r.messages[-1]["content"] for r in fake_llm.records] == ["first", "p1", "p4", "p6", "p9"]


async def test_limits_hold_against_the_server(fake_llm: FakeOpenAI) -> None:
    fake_llm.configure(rpm=600, latency_s=(0.02, 0.08))  # 10 requests per second, enforced per second
    settings = _settings(fake_llm, max_requests_per_minute=600, max_concurrency=32)
    async with OpenAIChatClient(settings) as client:
        started = time.monotonic()
        await asyncio.gather(*(client.chat(_messages(f"call {i}")) for i in range(25)))
        elapsed = time.monotonic() - started
    assert fake_llm.stats().rate_limited <= 2  # arrival jitter on a loaded machine may cost one
    assert elapsed >= 1.9  # 25 calls at 10 per second cannot finish in under two seconds
    assert client.stats.calls_ok == 25


async def test_cost_uses_configured_prices(fake_llm: FakeOpenAI) -> None:
    settings = _settings(fake_llm, price_input_per_mtok=1.0, price_output_per_mtok=2.0)
    async with OpenAIChatClient(settings) as client:
        result = await client.chat(_messages("hello"))
        expected = (result.prompt_tokens * 1.0 + result.completion_tokens * 2.0) / 1e6
        assert client.cost_usd(result.prompt_tokens, result.completion_tokens, 0) == pytest.approx(expected)
        assert client.stats.cost_usd == pytest.approx(expected)


async def test_unstarted_client_says_so(fake_llm: FakeOpenAI) -> None:
    client = OpenAIChatClient(_settings(fake_llm))
    with pytest.raises(RuntimeError, match="not started"):
        await client.chat(_messages("hello"))


async def test_key_never_in_logs_or_reprs(fake_llm: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and the HTTP library's included
    fake_llm.inject(Fault.rate_limit(retry_after_s=0.1))
    fake_llm.inject(Fault.server_error(500))
    fake_llm.inject(Fault.bad_request(), times=1)
    settings = _settings(fake_llm)
    async with OpenAIChatClient(settings, backoff_initial_s=0.05) as client:
        with pytest.raises(LLMCallError) as info:
            await client.chat(_messages("hello"))
        await client.chat(_messages("hello again"))
        texts = [repr(client), str(client), repr(settings), str(settings), repr(info.value), str(info.value)]
    assert any(r.name == "consumers.llm" for r in caplog.records)  # the client did log the retries
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text
    assert all(KEY not in text for text in texts)
