"""Verifiable instruction-following checks in the style of IFEval (Zhou et al., 2023), written for this project.

Each prompt in `instructions.jsonl` carries checks that a program can verify on the reply (word limits, bullet
counts, JSON output, required keywords...). A prompt passes when all its checks pass; the score is the share of
prompts passed (IFEval's prompt-level strict accuracy). Twelve prompts are enough to catch a candidate that has
stopped following instructions, not to rank good models: the evaluation gate uses the score with a margin.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPTS = Path(__file__).with_name("instructions.jsonl")
_WORD = re.compile(r"\b\w+\b")
_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclass(frozen=True, slots=True)
class Instruction:
    id: str
    prompt: str
    checks: tuple[dict[str, Any], ...]


def load_instructions(path: Path = PROMPTS) -> list[Instruction]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Instruction(r["id"], r["prompt"], tuple(r["checks"])) for r in rows]


def _words(reply: str) -> int:
    return len(_WORD.findall(reply))


def _json_keys(reply: str, keys: list[str]) -> bool:
    try:
        value = json.loads(_FENCE.sub("", reply.strip()))
    except ValueError:
        return False
    return isinstance(value, dict) and all(k in value for k in keys)


CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "max_words": lambda reply, n: 0 < _words(reply) <= n,
    "min_words": lambda reply, n: _words(reply) >= n,
    "bullets": lambda reply, n: len(_BULLET.findall(reply)) == n,
    "json_keys": _json_keys,
    "keywords": lambda reply, words: all(w.lower() in reply.lower() for w in words),
    "lowercase": lambda reply, _: reply.strip() != "" and reply == reply.lower(),
    "no_commas": lambda reply, _: reply.strip() != "" and "," not in reply,
    "ends_with": lambda reply, end: reply.strip().endswith(end),
}


def passes(instruction: Instruction, reply: str) -> bool:
    """True when the reply satisfies every check of the instruction."""
    return all(CHECKS[c["kind"]](reply, c.get("value")) for c in instruction.checks)
