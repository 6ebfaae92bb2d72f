"""One WebR chain as the two reference clients of `bench.capacity` run it: our prompts, our per-document plan.

`consumers.webr.processor` interleaves these steps with its state machine; the reference clients (Curator stage by
stage, 50 synchronous threads) need them as plain functions of one document so that every client sends the same
calls for the same document: the page capped and normalised as ours does, the same seeded section and category,
the same prompts. The quality filters beyond empty output and refusals are left out (the fake server's replies pass
them), so a document's chain has 3 calls (WI) or 4 (WR) in every client.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from consumers.llm.tokens import truncate_to_tokens
from consumers.llm.types import Message
from consumers.webr import prompts
from consumers.webr.plan import Category, document_rng, draw_plan
from consumers.webr.text import is_refusal, normalise, section
from core.records import parse_record

MAX_PAGE_TOKENS = 4096  # WebRSettings' default page cap


@dataclass(frozen=True, slots=True)
class Job:
    """What one document's chain will ask, drawn as `DocumentProcessor` draws it (same seed, same choices)."""

    doc_id: str
    page: str  # capped and normalised: what the persona call sees
    part: str  # the section every later call sees
    category: str
    noun: str
    words: int

    @property
    def is_wi(self) -> bool:
        return Category(self.category).is_wi

    def row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """The job of a dataset row that carries its fields (and the outputs of earlier stages)."""
        return cls(**{name: row[name] for name in cls.__slots__})


def plan_job(doc_id: str, text: str, seed: int = 0) -> Job:
    capped, _, _ = truncate_to_tokens(text, MAX_PAGE_TOKENS)
    page = normalise(capped)
    rng = document_rng(seed, doc_id)
    part = section(page, rng)  # drawn after the persona call in the processor; the draws do not depend on it
    plan = draw_plan(rng)
    return Job(doc_id, page, part.text, plan.category.value, plan.noun, plan.words)


def load_jobs(path: Path, seed: int = 0) -> list[Job]:
    """The documents of a JSONL file (`id` + `webpage` or `text`), planned."""
    docs = [parse_record(orjson.loads(line)) for line in path.read_bytes().splitlines() if line.strip()]
    return [plan_job(doc.doc_id, doc.text, seed) for doc in docs]


def usable(text: str) -> bool:
    """The engine's own check on every step's output: not empty, not a refusal."""
    return bool(text.strip()) and not is_refusal(text)


def persona_messages(job: Job) -> list[Message]:
    return prompts.persona_messages(job.page)


def request_messages(job: Job, persona: str) -> list[Message]:
    category = Category(job.category)
    return prompts.request_messages(
        job.part, persona, wi=category.is_wi, part=category.is_part, noun=job.noun, words=job.words
    )


def third_messages(job: Job, request: str) -> list[Message]:
    """WI: the response itself; WR: the rollout, answered without the page."""
    return prompts.wi_response_messages(job.part, request) if job.is_wi else prompts.rollout_messages(request)


def refine_messages(job: Job, request: str, rollout: str) -> list[Message]:
    return prompts.refine_messages(job.part, request, rollout)


def pair(job: Job, request: str, response: str) -> dict[str, Any]:
    """An output line of a reference client: enough to count it and to read it."""
    return {"doc_id": job.doc_id, "category": job.category, "request": request, "response": response}


def rejection(job: Job, step: str) -> dict[str, Any]:
    return {"doc_id": job.doc_id, "rejected": step}


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
