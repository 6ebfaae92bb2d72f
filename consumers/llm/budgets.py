"""Completion budgets per step of a chain: a `max_tokens` that fits the step, learnt from its real replies.

OpenAI counts `max_tokens` against the token limit when a request arrives (prompt + max_tokens), and so do many
gateways; a one-size cap (vLLM's reference 4096) makes a 60-token persona cost as much budget as a long answer.
Each step (persona, request, response, rollout, refine) has its own budget: a generous cold-start guess for its
first replies, then a margin over the largest reply of its recent history. A reply cut at a learnt budget is
asked again at the step's ceiling, so learning never costs a document; only a reply cut at the ceiling is bad
output.
"""

from __future__ import annotations

import math
from collections import deque

LEARN_AFTER = 20
"""Replies of a step seen before its budget follows them."""
HISTORY = 256
MARGIN = 1.5
FLOOR_TOKENS = 64


class StepBudgets:
    """`max_tokens` to send for each step, and the completion tokens to reserve for it."""

    def __init__(self, ceiling: int, *, default_tokens: int = 1024) -> None:
        self.ceiling = ceiling
        self.default_tokens = min(default_tokens, ceiling)
        self._seen: dict[str, deque[int]] = {}

    def max_tokens(self, step: str) -> int:
        """The budget to send: `MARGIN` over the largest recent reply, within [FLOOR_TOKENS, ceiling]."""
        seen = self._seen.get(step)
        if seen is None or len(seen) < LEARN_AFTER:
            return self.default_tokens
        return min(self.ceiling, max(FLOOR_TOKENS, math.ceil(MARGIN * max(seen))))

    def largest(self, step: str) -> int | None:
        """The largest of the step's recent replies (None before any): what to reserve where nothing caps it.

        The server charges the real completion on arrival; reserving the mean earned a 429 for every call longer
        than it once windows were filled to the estimate. The surplus comes back when the call settles."""
        seen = self._seen.get(step)
        return max(seen) if seen else None

    def observe(self, step: str, completion_tokens: int) -> None:
        self._seen.setdefault(step, deque(maxlen=HISTORY)).append(completion_tokens)
