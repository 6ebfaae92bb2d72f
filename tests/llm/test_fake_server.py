"""The fake OpenAI server itself: the tests of the client and the engine are only as good as it is."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from consumers.llm.tokens import count_tokens, messages_tokens
from devtools.fakeopenai import REFUSAL_TEXT, FakeOpenAI, Fault, FaultKind


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _post(server: FakeOpenAI, text: str, **params: Any) -> tuple[int, CIMultiDict[str], bytes]:
    body = {"model": "gpt-4o-mini", "messages": _messages(text), **params}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/chat/completions", json=body) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


async def _reply(server: FakeOpenAI, text: str, **params: Any) -> dict[str, Any]:
    status, _, body = await _post(server, text, **params)
    assert status == 200
    return orjson.loads(body)


async def test_replies_are_unique_recorded_and_counted(fake_llm: FakeOpenAI) -> None:
    first = await _reply(fake_llm, "same prompt")
    second = await _reply(fake_llm, "same prompt")
    texts = [r["choices"][0]["message"]["content"] for r in (first, second)]
    assert texts[0] != texts[1]  # same request twice still gets two distinguishable replies
    records = fake_llm.records
    assert [r.reply for r in records] == texts
    assert records[0].messages == _messages("same prompt")
    for payload, record in zip((first, second), records, strict=True):
        usage = payload["usage"]
        assert usage["prompt_tokens"] == messages_tokens(_messages("same prompt")) == record.prompt_tokens
        assert usage["completion_tokens"] == count_tokens(record.reply or "") == record.completion_tokens
        assert 40 <= len((record.reply or "").split()) <= 210


async def test_reply_length_is_configurable(fake_llm: FakeOpenAI) -> None:
    fake_llm.configure(reply_words=(300, 300))
    payload = await _reply(fake_llm, "long one")
    assert len(payload["choices"][0]["message"]["content"].split()) >= 300


async def test_max_tokens_truncates_with_finish_reason_length(fake_llm: FakeOpenAI) -> None:
    payload = await _reply(fake_llm, "short", max_tokens=5)
    assert payload["choices"][0]["finish_reason"] == "length"
    assert payload["usage"]["completion_tokens"] <= 5


async def test_responder_decides_per_request(fake_llm: FakeOpenAI) -> None:
    fake_llm.responder = lambda messages: Fault.refusal() if "MARKER" in messages[-1]["content"] else "fine."
    ok = await _reply(fake_llm, "plain")
    refused = await _reply(fake_llm, "has MARKER")
    assert ok["choices"][0]["message"]["content"] == "fine."
    assert refused["choices"][0]["message"]["content"] == REFUSAL_TEXT
    assert [r.fault for r in fake_llm.records] == [None, FaultKind.REFUSAL]


async def test_scripted_faults_come_in_order(fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.server_error(502))
    fake_llm.inject(Fault.rate_limit(retry_after_s=2.0))
    fake_llm.inject(Fault.garbage())
    statuses = []
    for _ in range(4):
        status, headers, body = await _post(fake_llm, "x")
        statuses.append(status)
        if status == 429:
            assert headers["retry-after"] == "2"
        if len(statuses) == 3:
            assert body.startswith(b"<html>")
    assert statuses == [502, 429, 200, 200]


async def test_random_faults_are_seeded(fake_llm_factory: Any) -> None:
    async def kinds(seed: int) -> list[FaultKind | None]:
        server = fake_llm_factory(seed=seed, fault_rates={FaultKind.SERVER_ERROR: 0.3, FaultKind.EMPTY: 0.2})
        for i in range(40):
            await _post(server, f"r{i}")
        return [r.fault for r in server.records]

    first, again = await kinds(7), await kinds(7)
    assert first == again
    assert 4 <= first.count(FaultKind.SERVER_ERROR) <= 22
    assert first.count(FaultKind.EMPTY) >= 2


@pytest.mark.fake_llm(rpm=600)
async def test_requests_limit_per_second_with_headers(fake_llm: FakeOpenAI) -> None:
    results = await asyncio.gather(*(_post(fake_llm, f"r{i}") for i in range(15)))
    statuses = [status for status, _, _ in results]
    # 15 at once: 10 fit in one second's slice, unless the burst straddles a window boundary.
    assert 10 <= statuses.count(200) <= 15
    refused = [headers for status, headers, _ in results if status == 429]
    if statuses.count(200) == 10:
        assert len(refused) == 5
    for headers in refused:
        assert headers["x-ratelimit-limit-requests"] == "600"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert float(headers["retry-after-ms"]) <= 1000
        assert headers["x-ratelimit-reset-requests"].endswith("ms")
    assert fake_llm.stats().rate_limited == statuses.count(429)


@pytest.mark.fake_llm(tpm=60_000)
async def test_token_charge_is_chars_over_four_plus_max_tokens(fake_llm: FakeOpenAI) -> None:
    text = "x" * 401
    await _post(fake_llm, text, max_tokens=50)
    await _post(fake_llm, "y" * 40)
    with_max, without = fake_llm.records
    assert with_max.charged_tokens == math.ceil(401 / 4) + 50
    assert without.charged_tokens == 10 + without.completion_tokens


@pytest.mark.fake_llm(tpm=6_000)  # 100 tokens per second
async def test_tokens_limit_refuses_and_counts_nothing_for_refusals(fake_llm: FakeOpenAI) -> None:
    first = await _post(fake_llm, "a" * 240, max_tokens=20)  # 80 tokens
    second = await _post(fake_llm, "b" * 240, max_tokens=20)  # 80 more: over 100 unless a new second began
    statuses = [first[0], second[0]]
    assert statuses[0] == 200
    if statuses[1] == 429:
        assert second[1]["x-ratelimit-remaining-tokens"] == "20"
        assert fake_llm.records[1].charged_tokens == 0
    stats = fake_llm.stats()
    assert sum(s.charged_tokens for s in stats.timeline.values()) == 80 * statuses.count(200)


async def test_timeout_fault_hangs(fake_llm: FakeOpenAI) -> None:
    fake_llm.inject(Fault.timeout(hang_s=5.0))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(_post(fake_llm, "x"), timeout=0.3)


async def test_models_and_prefix_cache(fake_llm: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{fake_llm.url}/models") as response:
        models = await response.json()
    assert models["data"][0]["id"] == "gpt-4o-mini"
    page = " ".join(f"word{i}" for i in range(3000))  # well over 1,024 tokens of shared prefix
    await _reply(fake_llm, page + " first question")
    second = await _reply(fake_llm, page + " second question")
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 1024
    assert fake_llm.records[0].cached_tokens == 0


async def test_malformed_request_is_400(fake_llm: FakeOpenAI) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake_llm.url}/chat/completions", data=b"{nope") as response,
    ):
        assert response.status == 400


async def test_capacity_serves_that_many_at_once_and_queues_the_rest(fake_llm: FakeOpenAI) -> None:
    fake_llm.configure(capacity=2, latency_s=0.3)
    replies = asyncio.gather(*(_reply(fake_llm, f"page {i}") for i in range(5)))
    await asyncio.sleep(0.15)
    async with aiohttp.ClientSession() as session, session.get(f"{fake_llm.url[:-3]}/metrics") as response:
        exposition = (await response.text()).splitlines()
    await replies
    assert 'vllm:num_requests_running{model_name="gpt-4o-mini"} 2.0' in exposition
    assert 'vllm:num_requests_waiting{model_name="gpt-4o-mini"} 3.0' in exposition
    assert 'vllm:kv_cache_usage_perc{model_name="gpt-4o-mini"} 1.0' in exposition
    service = sorted(fake_llm.stats().service)
    assert len(service) == 5
    # Never more than two in service: the third starts only when one of the first two ends.
    for i, (start, _) in enumerate(service[2:], start=2):
        assert sum(1 for s, e in service[:i] if s <= start < e - 1e-3) <= 1
    first, last = service[0][0], max(e for _, e in service)
    assert last - first >= 3 * 0.3 - 0.05  # 5 requests through 2 slots take three rounds
    assert fake_llm.stats().busy_slots(first, last) == pytest.approx(5 * 0.3 / (last - first), rel=0.1)


async def test_latency_grows_with_each_output_token(fake_llm: FakeOpenAI) -> None:
    fake_llm.configure(latency_per_token_s=0.01, reply_words=(30, 30))
    await _reply(fake_llm, "timed")
    (start, end), record = fake_llm.stats().service[0], fake_llm.records[0]
    assert end - start == pytest.approx(0.01 * record.completion_tokens, abs=0.05)
    assert record.completion_tokens >= 30
