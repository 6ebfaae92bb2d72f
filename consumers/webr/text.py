"""Local, LLM-free steps of WebR: sectioning the page, cleaning model output and the quality filters."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_BLANK_LINES = re.compile(r"\n\s*\n")
_LEADING_HASHES = re.compile(r"^\s*#+\s*")


@dataclass(frozen=True, slots=True)
class Section:
    """The part of the page every step after the persona works on."""

    text: str
    paragraphs_kept: int
    paragraphs_total: int

    @property
    def is_whole(self) -> bool:
        return self.paragraphs_kept == self.paragraphs_total


def paragraphs(page: str) -> tuple[list[str], str]:
    """Split on blank lines; pages that use single newlines between paragraphs (most crawls) split on those.

    Returns the paragraphs (leading markdown '#' removed, empty ones dropped) and the separator to rejoin them.
    """
    parts, sep = _BLANK_LINES.split(page), "\n\n"
    if len(parts) < 2:
        parts, sep = page.split("\n"), "\n"
    cleaned = [_LEADING_HASHES.sub("", p).strip() for p in parts]
    return [p for p in cleaned if p], sep


def normalise(page: str) -> str:
    """The page as sectioning sees it (paragraphs rejoined); every section is a text prefix of it, so a
    document's calls share one cacheable prefix from the persona call on."""
    paras, sep = paragraphs(page)
    return sep.join(paras) if paras else page.strip()


def section(page: str, rng: random.Random, keep_whole_probability: float = 0.5) -> Section:
    """Keep the whole page, or (with probability 1 - keep_whole_probability) a random-length paragraph prefix."""
    paras, sep = paragraphs(page)
    total = len(paras)
    if total == 0:
        return Section(page.strip(), 0, 0)
    kept = total if rng.random() < keep_whole_probability else rng.randint(1, total)
    return Section(sep.join(paras[:kept]), kept, total)


_HERE_IS = re.compile(r"^\s*(here is|here's|here are)\b[^\n]*\n+", re.IGNORECASE)
_IMPROVED = re.compile(r"^\s*\**\s*(improved|refined|revised|final)\s+answer\s*\**\s*:\s*\**\s*", re.IGNORECASE)
_QUOTES = ('"', "'", "“", "”", "‘", "’", "`")


def _strip_quotes(text: str) -> str:
    """Remove one layer of quotes wrapping the whole text (models like to quote the request they wrote)."""
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES and text.count(text[0]) <= 2:
        return text[1:-1].strip()
    return text


def clean(text: str, *, refined: bool = False) -> str:
    """Strip the chatter around model output: a leading 'Here is ...' line, wrapping quotes, answer labels."""
    out = text.strip()
    stripped = _HERE_IS.sub("", out, count=1)
    if stripped.strip():
        out = stripped.strip()
    if refined:
        out = _IMPROVED.sub("", out, count=1).strip()
    return _strip_quotes(out)


# A refusal is the assistant declining: "I'm sorry, but I can't help with that.", "I cannot assist with this
# request.", "As an AI language model, I cannot ...". A bare apology or "I can't" is not one: a request in a
# user's voice ("I'm sorry to bother you, but ...", "I can't help but wonder ...", "I'm unable to get my dough to
# rise ...") or an apology letter ("I apologize for the delay ...") opens the same way.
_CANNOT = r"i(?: can't| cannot| can not| won't| will not|(?: am|'m) (?:unable|not able) to)"
_DECLINED = r"(?:help|assist|provide|fulfil|fulfill|comply|create|write|generate|answer|complete|do that|do this)"
_REFUSAL = re.compile(
    rf"(?:(?:i'm|i am) sorry|i apologi[sz]e|sorry)\s*[,.!;:\u2014-]?\s*(?:but\s+)?{_CANNOT} {_DECLINED}\b(?! but)"
    rf"|{_CANNOT} (?:assist|help (?:with|you))\b"
    r"|as an ai(?: (?:language )?model| assistant)?\s*,?\s+i\b"
)


def is_refusal(text: str) -> bool:
    """A reply that opens by declining the task is not a usable training response."""
    head = text.strip().lower().replace("\u2019", "'")[:200]
    return _REFUSAL.match(head) is not None
