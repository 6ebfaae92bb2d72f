"""How close to its rate limits the LLM client runs, and how many 429s that costs.

`python -m bench.ratelimit` starts the fake OpenAI server with 600 requests and 400k tokens per minute enforced
per second and 0.1-0.3 s of latency, then drives the client with WebR-shaped documents (a page of ~1,000-1,500
tokens as the prefix of a chain of 3 or 4 calls, replies of ~200-400 tokens) under the same limits. Throughput
is read from the server's own per-second accounting (what it charged), in steady state: the first and last
seconds are left out. Target: >= 85% of the binding limit with < 5% of requests answered 429.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

from consumers.llm.client import ClientStats, OpenAIChatClient
from consumers.llm.settings import LLMSettings, Sampling
from consumers.llm.tokens import count_tokens
from devtools.fakeopenai import FakeOpenAI, ServerConfig, ServerStats

# Common English words with a few long ones, commas, numbers and short sentences: about five characters per
# token, like the crawled pages of data/web_en_1k.json (4.97), so characters / 4 overstates tokens as it does there.
_PAGE_VOCABULARY = (
    "the of and to in is that for it as with was on be by this are from at or an have not but which can more "
    "they their has one all were been about would there what when your will other into time some only could "
    "people through between because system information development research important government community "
    "including different according available following experience management particular "
    "small large early public water city house market price report energy health school policy history data "
    "year years new first last many most such also just over after before under while where these those "
    "work world state family group number point part place case week company program question problem"
)
_PAGE_WORDS = tuple(_PAGE_VOCABULARY.split())

SYSTEM = "You are a helpful assistant."


def start_server(
    rpm: int | None = 600,
    tpm: int | None = 400_000,
    *,
    latency_s: float | tuple[float, float] = (0.1, 0.3),
    reply_words: tuple[int, int] = (175, 345),
    seed: int = 0,
    port: int = 0,
) -> FakeOpenAI:
    """A started fake server with limits enforced per second; the caller stops it. Reused by CLI benchmarks."""
    config = ServerConfig(rpm=rpm, tpm=tpm, latency_s=latency_s, reply_words=reply_words, seed=seed)
    return FakeOpenAI(config, port=port).start()


def make_page(rng: random.Random, tokens: int) -> str:
    """Prose-like text of about `tokens` tokens, in paragraphs of short sentences."""
    paragraphs: list[str] = []
    total = 0
    while total < tokens:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            words = [_page_word(rng) for _ in range(rng.randint(8, 20))]
            sentences.append(" ".join(words).capitalize() + ".")
        paragraph = " ".join(sentences)
        paragraphs.append(paragraph)
        total += count_tokens(paragraph) + 1
    return "\n\n".join(paragraphs)


def _page_word(rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.03:
        return str(rng.randint(2, 2024))
    word = rng.choice(_PAGE_WORDS)
    return word + "," if draw > 0.93 else word


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


async def _document(client: OpenAIChatClient, seq: int, rng: random.Random, calls_left: list[int]) -> None:
    """One WebR-shaped chain: persona, request, then a response (WI) or a rollout without page and a refine (WR)."""
    page = make_page(rng, rng.randint(1000, 1500))
    wr = rng.random() < 1 / 3
    steps = 4 if wr else 3
    if calls_left[0] <= 0:
        return
    calls_left[0] -= steps
    persona = await client.chat(_user(f"{page}\n\nDescribe the author of this text in 30 words."), priority=seq)
    request = await client.chat(
        _user(f"{page}\n\nAuthor: {persona.text[:200]}\nWrite a request this text answers."), priority=seq
    )
    if not wr:
        await client.chat(_user(f"{page}\n\nDo this with the text above: {request.text[:600]}"), priority=seq)
        return
    rollout = await client.chat(_user(request.text[:600]), priority=seq)
    await client.chat(
        _user(f"{page}\n\nRequest: {request.text[:600]}\nDraft: {rollout.text}\nImprove the draft."), priority=seq
    )


@dataclass
class RunResult:
    requests_per_min: float
    tokens_per_min: float
    binding_share: float
    share_429: float
    retries: int
    calls_ok: int
    calls_failed: int
    wall_s: float


def steady_state(stats: ServerStats, trim_s: int) -> tuple[float, float]:
    """Requests/min and charged tokens/min over the seconds between the first and last `trim_s` seconds."""
    seconds = sorted(stats.timeline)
    if not seconds:
        return 0.0, 0.0
    first, last = seconds[0], seconds[-1]
    trim = min(trim_s, max(0, (last - first - 4) // 2))
    window = range(first + trim, last - trim)  # the last second is partial: leave it out in any case
    if not window:
        window = range(first, last + 1)
    requests = sum(stats.timeline[s].accepted for s in window if s in stats.timeline)
    tokens = sum(stats.timeline[s].charged_tokens for s in window if s in stats.timeline)
    return requests * 60 / len(window), tokens * 60 / len(window)


async def run_once(args: argparse.Namespace, seed: int) -> RunResult:
    server = start_server(args.rpm, args.tpm, latency_s=(args.latency_min, args.latency_max), seed=seed)
    try:
        settings = LLMSettings(
            base_url=server.url,
            api_key="sk-bench",
            model="gpt-4o-mini",
            max_concurrency=args.concurrency,
            max_requests_per_minute=args.rpm,
            max_tokens_per_minute=args.tpm,
            sampling=Sampling(temperature=1.0),
        )
        rng = random.Random(seed)
        calls_left = [args.calls]
        started = time.monotonic()
        async with OpenAIChatClient(settings) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for seq in range(args.calls):  # more documents than needed; calls_left stops them
                queue.put_nowait(seq)

            async def worker(worker_rng: random.Random) -> None:
                while calls_left[0] > 0 and not queue.empty():
                    await _document(client, queue.get_nowait(), worker_rng, calls_left)

            workers = [worker(random.Random(rng.random())) for _ in range(args.documents_in_flight)]
            await asyncio.gather(*workers)
            stats: ClientStats = client.stats
        wall = time.monotonic() - started
    finally:
        server.stop()
    server_stats = server.stats()
    rpm_rate, tpm_rate = steady_state(server_stats, args.trim_s)
    shares = [rate / limit for rate, limit in ((rpm_rate, args.rpm), (tpm_rate, args.tpm)) if limit]
    return RunResult(
        requests_per_min=rpm_rate,
        tokens_per_min=tpm_rate,
        binding_share=max(shares) if shares else 0.0,
        share_429=server_stats.rate_limited / max(1, server_stats.requests),
        retries=stats.retries,
        calls_ok=stats.calls_ok,
        calls_failed=stats.calls_failed,
        wall_s=wall,
    )


def _line(label: str, r: RunResult) -> str:
    return (
        f"{label:>8}  req/min {r.requests_per_min:7.1f}  tok/min {r.tokens_per_min:9.0f}  "
        f"binding limit used {r.binding_share:6.1%}  429s {r.share_429:6.2%}  retries {r.retries:4g}  "
        f"calls ok/failed {r.calls_ok}/{r.calls_failed}  wall {r.wall_s:5.1f}s"
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="LLM calls per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--tpm", type=int, default=400_000)
    parser.add_argument("--latency-min", type=float, default=0.1)
    parser.add_argument("--latency-max", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=64, help="client max_concurrency")
    parser.add_argument("--documents-in-flight", type=int, default=64)
    parser.add_argument("--trim-s", type=int, default=5, help="seconds left out at each end")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = make_parser().parse_args(argv)
    print(f"limits {args.rpm} req/min, {args.tpm} tok/min enforced per second; {args.calls} calls x {args.repeats}")
    results = []
    for i in range(args.repeats):
        result = asyncio.run(run_once(args, args.seed + i))
        results.append(result)
        print(_line(f"run {i + 1}", result), flush=True)
    median = RunResult(
        *(statistics.median(getattr(r, f) for r in results) for f in RunResult.__dataclass_fields__)  # type: ignore[arg-type]
    )
    print(_line("median", median))
    met = median.binding_share >= 0.85 and median.share_429 < 0.05
    print(f"target >= 85% of the binding limit with < 5% 429s: {'met' if met else 'NOT met'}")
    return {"median": median, "runs": results, "met": met}


if __name__ == "__main__":
    main()
