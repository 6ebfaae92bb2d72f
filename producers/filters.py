"""Quality filters applied before a page reaches Kafka: length bounds, boilerplate share, and the Gopher rules.

The Gopher rules (Rae et al. 2021, "Scaling Language Models", appendix A; the same thresholds datatrove uses) drop
pages that are not running prose: too few or too many words, odd mean word length, symbol soup, bullet or ellipsis
lists, and pages made of repeated lines, paragraphs or n-grams. Word-based rules need whitespace between words, so
they are skipped for languages written without it (Chinese, Japanese, Thai, ...); the line, paragraph and
character rules still apply. Every rule returns a stable reason code, counted per reason by the producer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "wuu", "yue"})
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_BULLETS = ("•", "●", "○", "▪", "◦", "‣", "-", "*", "·")
_PARAGRAPHS = re.compile(r"\n\s*\n")
_ALPHA_WORDS = re.compile(r"\S*[^\W\d_]\S*")
"""A whitespace-delimited word holding at least one letter."""


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """Thresholds; `None` turns a bound off. Defaults follow Gopher, except the boilerplate and length bounds."""

    min_chars: int = 200
    max_chars: int = 500_000
    min_main_share: float | None = 0.05
    """Pages whose main content is under this share of their visible text are navigation or listing pages."""
    gopher_quality: bool = True
    gopher_repetition: bool = True
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    """Only for English, where the stop-word list applies."""
    max_dup_line_ratio: float = 0.3
    max_dup_para_ratio: float = 0.3
    max_dup_line_char_ratio: float = 0.2
    max_dup_para_char_ratio: float = 0.2
    top_ngram_char_ratios: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_ngram_char_ratios: tuple[tuple[int, float], ...] = field(
        default=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    )


def check(text: str, language: str, main_share: float | None, config: FilterConfig) -> str | None:
    """The reason this page is dropped, or None to keep it. Cheapest rules first."""
    if len(text) < config.min_chars:
        return "too_short"
    if len(text) > config.max_chars:
        return "too_long"
    if main_share is not None and config.min_main_share is not None and main_share < config.min_main_share:
        return "boilerplate"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if config.gopher_repetition and (reason := _repetition(text, lines, language, config)):
        return reason
    if config.gopher_quality and (reason := _quality(text, lines, language, config)):
        return reason
    return None


def _quality(text: str, lines: Sequence[str], language: str, config: FilterConfig) -> str | None:
    if lines and sum(line.startswith(_BULLETS) for line in lines) / len(lines) > config.max_bullet_lines_ratio:
        return "gopher_bullet_lines"
    if lines and sum(line.endswith(("...", "…")) for line in lines) / len(lines) > config.max_ellipsis_lines_ratio:
        return "gopher_ellipsis_lines"
    if language in NO_SPACE_LANGUAGES:
        return None
    words = text.split()
    if not config.min_words <= len(words) <= config.max_words:
        return "gopher_word_count"
    mean_length = sum(map(len, words)) / len(words)
    if not config.min_mean_word_length <= mean_length <= config.max_mean_word_length:
        return "gopher_mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / len(words) > config.max_symbol_word_ratio:
        return "gopher_symbol_ratio"
    if len(_ALPHA_WORDS.findall(" ".join(words))) / len(words) < config.min_alpha_words_ratio:
        return "gopher_alpha_words"
    if language == "en" and not _has_stop_words(words, config.min_stop_words):
        return "gopher_stop_words"
    return None


def _has_stop_words(words: Sequence[str], needed: int) -> bool:
    """At least `needed` stop words; stops reading at the `needed`-th (usually within the first sentence)."""
    found = islice((w for w in words if w.lower() in STOP_WORDS), needed)
    return sum(1 for _ in found) >= needed


def _dup_share(items: Sequence[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        seen.add(item)
    return dup_items / len(items), dup_chars / max(1, sum(len(i) for i in items))


def _repetition(text: str, lines: Sequence[str], language: str, config: FilterConfig) -> str | None:
    line_share, line_chars = _dup_share(lines)
    if line_share > config.max_dup_line_ratio:
        return "gopher_dup_lines"
    if line_chars > config.max_dup_line_char_ratio:
        return "gopher_dup_line_chars"
    paragraphs = [p.strip() for p in _PARAGRAPHS.split(text) if p.strip()]
    para_share, para_chars = _dup_share(paragraphs)
    if para_share > config.max_dup_para_ratio:
        return "gopher_dup_paragraphs"
    if para_chars > config.max_dup_para_char_ratio:
        return "gopher_dup_paragraph_chars"
    if language in NO_SPACE_LANGUAGES:
        return None
    words = text.split()
    total = sum(map(len, words)) or 1
    for n, limit in config.top_ngram_char_ratios:
        grams = Counter(_ngrams(words, n))
        if grams:
            gram, count = grams.most_common(1)[0]
            if count > 1 and sum(map(len, gram)) * count / total > limit:
                return f"gopher_top_{n}gram"
    # A word inside a repeated (n+1)-gram is inside a repeated n-gram, so coverage only falls as n grows: when the
    # shortest n-grams already cover less than the smallest limit, no longer n-gram can fail.
    ratios = sorted(config.dup_ngram_char_ratios)
    smallest = min((limit for _, limit in ratios), default=1.0)
    for n, limit in ratios:
        covered = _dup_ngram_chars(words, n) / total
        if covered > limit:
            return f"gopher_dup_{n}gram"
        if covered <= smallest:
            break
    return None


def _ngrams(words: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    return zip(*(words[i:] for i in range(n)), strict=False)


def _dup_ngram_chars(words: Sequence[str], n: int) -> int:
    """Characters of words covered by an n-gram that already occurred (each word counted once)."""
    seen: set[tuple[str, ...]] = set()
    covered_until = 0
    chars = 0
    for i, gram in enumerate(_ngrams(words, n)):
        if gram in seen:
            chars += sum(len(words[j]) for j in range(max(i, covered_until), i + n))
            covered_until = i + n
        else:
            seen.add(gram)
    return chars
