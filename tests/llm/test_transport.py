"""The transport honours the proxy environment, as the openai SDK did, reading it once per session."""

from __future__ import annotations

import pytest

from consumers.llm.client import OpenAIChatClient
from consumers.llm.settings import LLMSettings
from consumers.llm.transport import env_proxy
from devtools.fakeopenai import FakeOpenAI


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
