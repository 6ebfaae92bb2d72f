"""The transport honours the proxy environment, as the openai SDK did, reading it once per session; the replica
pool's health checks and /metrics polls take the same way as the calls."""

from __future__ import annotations

import asyncio

import pytest

from consumers.llm.client import OpenAIChatClient
from consumers.llm.concurrency import GradientLimit, SchedulerLimit
from consumers.llm.settings import LLMSettings
from consumers.llm.transport import env_proxy
from devtools.fakeopenai import FakeOpenAI
from devtools.fakeopenai.faults import Fault


def test_proxy_from_the_environment_unless_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "internal.test")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.test:3128"
    assert env_proxy("https://vllm.internal.test/v1") is None
    assert env_proxy("http://api.openai.com/v1") is None  # no HTTP_PROXY for plain http


async def test_calls_go_through_the_proxy_the_environment_names(
    fake_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake server stands in for the proxy: it answers the absolute-form request a client sends to a proxy,
    # so a call to a host that does not exist succeeds only if it went through the proxy.
    monkeypatch.setenv("HTTP_PROXY", fake_llm.url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    settings = LLMSettings(base_url="http://llm.invalid/v1", request_timeout_s=5.0, give_up_after_s=3.0)
    async with OpenAIChatClient(settings) as client:
        result = await client.chat([{"role": "user", "content": "through the proxy"}])
    [record] = fake_llm.records
    assert result.text == record.reply


def _through_proxy(proxy: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


async def test_health_checks_go_through_the_replicas_proxy(
    fake_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replica's host does not exist: its health check is answered, and the replica back in rotation, only
    # if the check went through the proxy as its calls do.
    _through_proxy(fake_llm, monkeypatch)
    settings = LLMSettings(
        base_url="http://llm.invalid/v1",
        request_timeout_s=5.0,
        eject_after_failures=1,
        health_check_initial_s=0.05,
        adaptive_concurrency=False,
    )
    fake_llm.inject(Fault.server_error(503))
    async with OpenAIChatClient(settings, backoff_initial_s=0.02, backoff_max_s=0.05) as client:
        # The first attempt's 503 takes the only replica out: the retry waits until a health check answers.
        result = await asyncio.wait_for(client.chat([{"role": "user", "content": "after the outage"}]), 10)
        [replica] = client.pool.replicas
    assert replica.breaker.stats.opened == 1 and not replica.breaker.is_open
    assert result.text == fake_llm.records[-1].reply


async def test_metrics_polls_go_through_the_replicas_proxy(
    fake_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the proxy the poll gets the server's 404 (no scheduler gauges) and the pool sizes the replica by
    # latency instead; a poll that went direct would fail to resolve the host and keep the scheduler limit.
    _through_proxy(fake_llm, monkeypatch)
    fake_llm.configure(expose_metrics=False)
    settings = LLMSettings(base_url="http://llm.invalid/v1", request_timeout_s=5.0, scheduler_poll_s=0.05)
    async with OpenAIChatClient(settings) as client:
        [replica] = client.pool.replicas
        assert isinstance(replica.limit, SchedulerLimit) and replica.watcher is not None
        await asyncio.wait_for(replica.watcher, 10)  # it ends once it has switched the limit
    assert isinstance(replica.limit, GradientLimit)
