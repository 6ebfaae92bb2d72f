"""Record real SmolLM2-135M-Instruct outputs for every WebR step, as fixtures for the quality-filter tests.

    python -m tests.support.record_outputs --base-url http://127.0.0.1:8000/v1 --model smollm2 \
        --pages tests/fixtures/smollm2_pages.jsonl --out tests/fixtures/smollm2_outputs.json

Each page gets a persona, then a WI and a WR request, the WI response, the WR rollout and its refinement, with
the engine's own prompts and the vLLM defaults (temperature 0.6, top_p 0.9) at a fixed seed. Each record carries
`expect`, written afterwards by a person reading the text: the rejection reason it deserves, null to keep it, or
"not_filtered" for rollouts (never training text); `missed` marks a degenerate output the filters let by.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

from consumers.webr import prompts
from consumers.webr.text import clean, normalise


def _ask(client: OpenAI, model: str, messages: list, seed: int, max_tokens: int) -> tuple[str, str]:
    reply = client.chat.completions.create(
        model=model, messages=messages, temperature=0.6, top_p=0.9, max_tokens=max_tokens, seed=seed
    )
    choice = reply.choices[0]
    return choice.message.content or "", choice.finish_reason


def record_page(client: OpenAI, model: str, doc: dict, seed: int, max_tokens: int) -> list[dict]:
    page = normalise(doc["webpage"])
    out: list[dict] = []

    def step(name: str, messages: list, refined: bool = False) -> str:
        raw, finish = _ask(client, model, messages, seed, max_tokens)
        out.append(
            {"doc_id": doc["id"], "step": name, "seed": seed, "finish_reason": finish, "expect": None, "text": raw}
        )
        return clean(raw, refined=refined)

    persona = step("persona", prompts.persona_messages(page))
    wi = step("request_wi", prompts.request_messages(page, persona, wi=True, part=False, noun="request", words=60))
    step("response_wi", prompts.wi_response_messages(page, wi))
    wr = step("request_wr", prompts.request_messages(page, persona, wi=False, part=False, noun="question", words=60))
    rollout = step("rollout", prompts.rollout_messages(wr))
    step("refine", prompts.refine_messages(page, wr, rollout), refined=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pages", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="none")
    docs = [json.loads(line) for line in args.pages.read_text(encoding="utf-8").splitlines() if line.strip()]
    with ThreadPoolExecutor(max_workers=len(docs)) as pool:  # pages in flight together fill vLLM's batch
        per_page = pool.map(lambda doc: record_page(client, args.model, doc, args.seed, args.max_tokens), docs)
        records = [r for page in per_page for r in page]
    args.out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(records)} outputs -> {args.out}")


if __name__ == "__main__":
    main()
