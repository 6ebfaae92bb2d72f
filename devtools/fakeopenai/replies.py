"""Deterministic, plausible reply text and a simulated prompt cache for the fake server."""

from __future__ import annotations

import hashlib
import random

_VOCABULARY = (
    "the a this that our their data model page text reader author answer question request section summary "
    "detail example method result value point idea context source paragraph list step system process user "
    "team project report article guide note topic field study analysis approach feature reason evidence "
    "clear short useful careful specific practical important relevant simple brief concise accurate formal "
    "explains describes shows compares lists outlines covers keeps gives uses adds checks builds follows "
    "with for from into about across before after while because so and but also then each every many"
)
_WORDS = tuple(_VOCABULARY.split())


def digest(messages: list[dict[str, str]]) -> str:
    """A short stable hash of a request's messages."""
    h = hashlib.sha256()
    for m in messages:
        h.update(str(m.get("role", "")).encode())
        h.update(b"\x00")
        h.update(str(m.get("content") or "").encode())
        h.update(b"\x01")
    return h.hexdigest()[:10]


def default_reply(messages: list[dict[str, str]], index: int, words: tuple[int, int], seed: int) -> str:
    """Unique per request (its index and the hash of its messages lead the text), same for the same input."""
    tag = digest(messages)
    rng = random.Random(f"{seed}:{tag}:{index}")
    target = rng.randint(*words)
    sentences: list[str] = []
    count = 0
    while count < target:
        n = min(rng.randint(6, 16), target - count)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(max(n, 1)))
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        count += max(n, 1)
    return f"Reply {index} ({tag}). " + " ".join(sentences)


class PrefixCache:
    """Remembers prompt prefixes in blocks, like OpenAI's prompt caching (1024 tokens minimum, 128-token steps).

    Blocks are characters (4 per token, OpenAI's own rule of thumb), enough to show whether a client keeps the
    page as the shared prefix of a document's calls.
    """

    BLOCK_CHARS = 512
    MIN_TOKENS = 1024
    STEP_TOKENS = 128

    def __init__(self, max_blocks: int = 200_000) -> None:
        self._seen: set[bytes] = set()
        self._max_blocks = max_blocks

    def cached_tokens(self, messages: list[dict[str, str]], prompt_tokens: int) -> int:
        text = "".join(f"{m.get('role', '')}:{m.get('content') or ''}\n" for m in messages)
        h = hashlib.blake2b(digest_size=16)
        cached_chars = 0
        hit = True
        for start in range(0, len(text) - self.BLOCK_CHARS + 1, self.BLOCK_CHARS):
            h.update(text[start : start + self.BLOCK_CHARS].encode())
            key = h.copy().digest()
            if hit and key in self._seen:
                cached_chars = start + self.BLOCK_CHARS
            else:
                hit = False
                if len(self._seen) >= self._max_blocks:
                    self._seen.clear()
                self._seen.add(key)
        tokens = min(cached_chars // 4, prompt_tokens)
        if tokens < self.MIN_TOKENS:
            return 0
        return tokens - tokens % self.STEP_TOKENS
