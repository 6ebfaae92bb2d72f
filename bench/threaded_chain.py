"""The WebR reference's approach, with our prompts: a pool of threads over the documents, each running its chain
with the synchronous OpenAI client, one call after another.

    python -m bench.threaded_chain --source docs.jsonl --output out.jsonl --base-url URL --threads 50

One output line per document (a pair, or the step it stopped at). Retries are the SDK's (exponential backoff that
honours retry-after); a document whose call still fails is written as rejected, as the reference drops it.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from bench import webr_chain as chain
from consumers.llm.types import Message
from consumers.webr.text import clean


class Chat:
    """One shared synchronous client (the SDK's connection pool is thread-safe) and fixed sampling."""

    def __init__(self, client: openai.OpenAI, model: str, sampling: dict[str, Any]) -> None:
        self.client = client
        self.model = model
        self.sampling = sampling

    def __call__(self, messages: list[Message]) -> str:
        reply = self.client.chat.completions.create(model=self.model, messages=messages, **self.sampling)  # type: ignore[arg-type]
        return reply.choices[0].message.content or ""


def run_document(chat: Chat, job: chain.Job) -> dict[str, Any]:
    step = "persona"
    try:
        persona = clean(chat(chain.persona_messages(job)))
        if not chain.usable(persona):
            return chain.rejection(job, step)
        step = "request"
        request = clean(chat(chain.request_messages(job, persona)))
        if not chain.usable(request):
            return chain.rejection(job, step)
        step = "response" if job.is_wi else "rollout"
        third = clean(chat(chain.third_messages(job, request)))
        if not chain.usable(third):
            return chain.rejection(job, step)
        if job.is_wi:
            return chain.pair(job, request, third)
        step = "refine"
        response = clean(chat(chain.refine_messages(job, request, third)), refined=True)
        return chain.pair(job, request, response) if chain.usable(response) else chain.rejection(job, step)
    except openai.OpenAIError:
        return chain.rejection(job, step)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.threaded_chain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="JSONL of documents (id + webpage)")
    parser.add_argument("--output", type=Path, required=True, help="JSONL written at the end")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="sk-bench")
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--sampling", type=json.loads, default={}, help="JSON of temperature/top_p/max_tokens")
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    jobs = chain.load_jobs(args.source, args.seed)
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=args.max_retries, timeout=600)
    chat = Chat(client, args.model, args.sampling)
    with ThreadPoolExecutor(args.threads) as pool:
        results = list(pool.map(lambda job: run_document(chat, job), jobs))
    chain.write_jsonl(args.output, results)


if __name__ == "__main__":
    main()
