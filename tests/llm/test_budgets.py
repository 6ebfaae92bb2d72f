"""Per-step completion budgets: generous at first, then fitted to each step's replies, never below the ceiling's
word when a reply is cut."""

from __future__ import annotations

from collections.abc import Callable

from consumers.llm.budgets import LEARN_AFTER, StepBudgets
from consumers.llm.client import OpenAIChatClient
from consumers.llm.settings import LLMSettings, Sampling
from devtools.fakeopenai import FakeOpenAI


def test_each_step_learns_its_own_budget_within_the_ceiling() -> None:
    budgets = StepBudgets(ceiling=4096)
    assert budgets.max_tokens("persona") == 1024  # cold start
    for _ in range(LEARN_AFTER):
        budgets.observe("persona", 60)
        budgets.observe("response", 3000)
    assert budgets.max_tokens("persona") == 90  # 1.5 x the largest reply
    assert budgets.max_tokens("response") == 4096  # capped by the ceiling
    assert budgets.max_tokens("request") == 1024  # a step never seen keeps the cold start
    budgets.observe("persona", 75)
    assert budgets.largest("persona") == 75  # reserved where no max_tokens caps the reply


async def test_a_reply_cut_at_a_learnt_budget_is_asked_again_at_the_ceiling(
    fake_llm_factory: Callable[..., FakeOpenAI],
) -> None:
    server = fake_llm_factory()
    settings = LLMSettings(base_url=server.url, api_key="sk-test", sampling=Sampling(max_tokens=2000))
    messages = [{"role": "user", "content": "Who wrote this?"}]
    async with OpenAIChatClient(settings) as client:
        server.responder = lambda _: "A short persona."  # the step's replies so far are short
        for _ in range(LEARN_AFTER):
            await client.chat(messages, step="persona")
        server.responder = lambda _: "word " * 300  # this one is not
        result = await client.chat(messages, step="persona")
    sent = [r.params["max_tokens"] for r in server.records]
    assert sent[:LEARN_AFTER] == [1024] * LEARN_AFTER  # cold start
    assert sent[LEARN_AFTER:] == [64, 2000]  # learnt (the floor), then cut, then the ceiling
    assert server.records[LEARN_AFTER].finish_reason == "length"
    assert result.attempts == 2 and result.finish_reason == "stop"
