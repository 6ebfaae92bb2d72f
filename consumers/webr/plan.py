"""Per-document random choices of WebR, drawn from a generator seeded by (run seed, document id), and the
sampling seed of each of the document's LLM calls.

Seeding per document (not per position in the input) makes every choice reproducible whatever order a stream
delivers documents in, and keeps the 2:1 WI:WR and 1:1 whole:part ratios on any stream, however it is split.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    WI_ALL = "WI_all"
    WI_PART = "WI_part"
    WR_ALL = "WR_all"
    WR_PART = "WR_part"

    @property
    def branch(self) -> str:
        return self.value[:2]

    @property
    def is_wi(self) -> bool:
        return self.branch == "WI"

    @property
    def is_part(self) -> bool:
        return self.value.endswith("_part")


# WI : WR = 2 : 1, whole : part = 1 : 1 within each branch.
CATEGORY_WEIGHTS: dict[Category, float] = {
    Category.WI_ALL: 2 / 6,
    Category.WI_PART: 2 / 6,
    Category.WR_ALL: 1 / 6,
    Category.WR_PART: 1 / 6,
}
WORD_LIMITS = (50, 100, 150, 200)
WI_NOUNS = ("request", "instruction")
WR_NOUNS = ("request", "instruction", "question")


def document_rng(seed: int, doc_id: str) -> random.Random:
    """A generator private to one document of one run."""
    digest = hashlib.blake2b(f"{seed}\x1f{doc_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def call_seed(seed: int, doc_id: str, step: str) -> int:
    """The sampling seed of one step of one document of one run (below 2**31, which every server takes): a
    rerun samples the same text whatever order or batch the calls land in, and no two calls share a seed."""
    digest = hashlib.blake2b(f"{seed}\x1f{doc_id}\x1f{step}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True, slots=True)
class Plan:
    """What will be asked of the model for one document."""

    category: Category
    noun: str
    words: int
    page_first: bool

    @property
    def calls(self) -> int:
        """LLM calls of the chain: persona and request, then the response (WI) or a rollout and its refinement
        (WR)."""
        return 3 if self.category.is_wi else 4


def draw_plan(rng: random.Random) -> Plan:
    """Draw branch/category, the request noun, the word limit and the WI prompt order."""
    category = rng.choices(list(CATEGORY_WEIGHTS), weights=list(CATEGORY_WEIGHTS.values()))[0]
    noun = rng.choice(WI_NOUNS if category.is_wi else WR_NOUNS)
    return Plan(category=category, noun=noun, words=rng.choice(WORD_LIMITS), page_first=rng.random() < 0.5)
