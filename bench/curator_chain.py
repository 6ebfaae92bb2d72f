"""The same WebR chain written stage by stage with bespokelabs Curator, the way a Curator user writes it: one
`curator.LLM` per step over the whole dataset, each stage waiting for the previous one to finish.

    .venv-bench/bin/python -m bench.curator_chain --source docs.jsonl --output out.jsonl --base-url URL \\
        --model M --max-concurrency 64 --work-dir DIR

Four stages: persona (every document), request, then the WI response or the WR rollout in one stage (a prompt
that picks by category: a user would not wait for two half-size stages), then the WR refine. Between stages the
engine's own checks drop empty or refused outputs. Curator runs from its own virtualenv (`make install-bench`):
its pins would downgrade packages of the project's. Offline: no telemetry, no hosted viewer, litellm's bundled
cost map, tiktoken's cl100k_base from the project's offline copy, and a fresh cache under --work-dir (caching off).
"""

from __future__ import annotations

import os

# Read by Curator and litellm when they are imported: nothing may reach the network.
os.environ.setdefault("TELEMETRY_ENABLED", "false")
os.environ.setdefault("CURATOR_DISABLE_CACHE", "true")
os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse
import json
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.registry

from consumers.llm.tokens import ENCODING

# Curator counts tokens with cl100k_base, which tiktoken would download; the offline copy is the same encoding.
tiktoken.registry.ENCODINGS.setdefault("cl100k_base", tiktoken.get_encoding(ENCODING))

from bespokelabs import curator  # noqa: E402

from bench import webr_chain as chain  # noqa: E402
from consumers.llm.types import Message  # noqa: E402
from consumers.webr.text import clean  # noqa: E402


class Persona(curator.LLM):
    def prompt(self, row: dict[str, Any]) -> list[Message]:
        return chain.persona_messages(chain.Job.from_row(row))

    def parse(self, row: dict[str, Any], response: str) -> dict[str, Any]:
        return {**row, "persona": clean(response)}


class Request(curator.LLM):
    def prompt(self, row: dict[str, Any]) -> list[Message]:
        return chain.request_messages(chain.Job.from_row(row), row["persona"])

    def parse(self, row: dict[str, Any], response: str) -> dict[str, Any]:
        return {**row, "request": clean(response)}


class ResponseOrRollout(curator.LLM):
    def prompt(self, row: dict[str, Any]) -> list[Message]:
        return chain.third_messages(chain.Job.from_row(row), row["request"])

    def parse(self, row: dict[str, Any], response: str) -> dict[str, Any]:
        return {**row, "third": clean(response)}


class Refine(curator.LLM):
    def prompt(self, row: dict[str, Any]) -> list[Message]:
        return chain.refine_messages(chain.Job.from_row(row), row["request"], row["third"])

    def parse(self, row: dict[str, Any], response: str) -> dict[str, Any]:
        return {**row, "response": clean(response, refined=True)}


def _stage(
    llm: curator.LLM, rows: list[dict[str, Any]], field: str, step: str, work_dir: Path, out: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run one stage over `rows`; rows whose output is unusable end as rejections in `out`."""
    if not rows:
        return []
    done = list(llm(rows, working_dir=str(work_dir)).dataset)
    kept = []
    for row in done:
        if chain.usable(row[field]):
            kept.append(row)
        else:
            out.append(chain.rejection(chain.Job.from_row(row), step))
    answered = {row["doc_id"] for row in done}
    out.extend(chain.rejection(chain.Job.from_row(row), step) for row in rows if row["doc_id"] not in answered)
    return kept


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    jobs = chain.load_jobs(args.source, args.seed)
    limits = {
        "base_url": args.base_url,
        "api_key": args.api_key,
        "max_concurrent_requests": args.max_concurrency,
        "max_requests_per_minute": args.rpm,
        "max_tokens_per_minute": args.tpm,
    }
    common = {"model_name": args.model, "backend": "openai", "generation_params": args.sampling}
    out: list[dict[str, Any]] = []
    rows = [job.row() for job in jobs]
    rows = _stage(Persona(**common, backend_params=limits), rows, "persona", "persona", args.work_dir, out)
    rows = _stage(Request(**common, backend_params=limits), rows, "request", "request", args.work_dir, out)
    rows = _stage(ResponseOrRollout(**common, backend_params=limits), rows, "third", "response", args.work_dir, out)
    wi = [row for row in rows if chain.Job.from_row(row).is_wi]
    out.extend(chain.pair(chain.Job.from_row(row), row["request"], row["third"]) for row in wi)
    wr = [row for row in rows if not chain.Job.from_row(row).is_wi]
    refined = _stage(Refine(**common, backend_params=limits), wr, "response", "refine", args.work_dir, out)
    out.extend(chain.pair(chain.Job.from_row(row), row["request"], row["response"]) for row in refined)
    return out


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.curator_chain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="JSONL of documents (id + webpage)")
    parser.add_argument("--output", type=Path, required=True, help="JSONL written at the end")
    parser.add_argument("--work-dir", type=Path, required=True, help="Curator's cache and request files")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="sk-bench")
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--rpm", type=int, default=1_000_000, help="what the user tells Curator (a vLLM: no limit)")
    parser.add_argument("--tpm", type=int, default=1_000_000_000)
    parser.add_argument("--sampling", type=json.loads, default={}, help="JSON of temperature/top_p/max_tokens")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    chain.write_jsonl(args.output, run(args))


if __name__ == "__main__":
    main()
