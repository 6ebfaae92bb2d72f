"""The fake server's rate limiter: per-minute limits enforced in fixed one-second windows.

What it charges, per request, on arrival:
- requests: 1;
- tokens: ceil(characters of all message contents / 4) (OpenAI's own estimate, not the tokenizer) plus
  `max_tokens` (or `max_completion_tokens`) when the request gives one, else the completion tokens of the reply
  it is about to send (the reply is computed before the check).
A window allows rpm/60 requests and tpm/60 tokens (scaled by `window_s`). A request that is refused is not
charged. A request larger than a whole window's token budget is accepted only into an untouched window, so a big
prompt is slow rather than impossible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """OpenAI's rate-limit estimate of a prompt: characters / 4, rounded up."""
    return math.ceil(sum(len(str(m.get("content") or "")) for m in messages) / 4)


def go_duration(seconds: float) -> str:
    """Format like OpenAI's reset headers: "120ms", "1.5s", "6m0s"."""
    if seconds < 1.0:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


@dataclass(slots=True)
class Decision:
    allowed: bool
    headers: dict[str, str]


class WindowLimiter:
    """Fixed windows of `window_s` seconds, numbered from the server's start."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = 1.0) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self._window = -1
        self._requests = 0
        self._tokens = 0

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def _budgets(self) -> tuple[float, float]:
        scale = self.window_s / 60.0
        requests = self.rpm * scale if self.rpm is not None else math.inf
        tokens = self.tpm * scale if self.tpm is not None else math.inf
        return requests, tokens

    def check(self, elapsed_s: float, tokens: int) -> Decision:
        """Charge one request of `tokens` at `elapsed_s` after start if it fits; headers either way."""
        window = math.floor(elapsed_s / self.window_s)
        if window != self._window:
            self._window, self._requests, self._tokens = window, 0, 0
        req_budget, tok_budget = self._budgets()
        fits_requests = self._requests + 1 <= req_budget + 1e-9
        fits_tokens = self._tokens + tokens <= tok_budget + 1e-9 or (self._tokens == 0 and tokens > tok_budget)
        allowed = fits_requests and fits_tokens
        if allowed:
            self._requests += 1
            self._tokens += tokens
        reset = (window + 1) * self.window_s - elapsed_s
        return Decision(allowed, self._headers(reset, req_budget, tok_budget, allowed))

    def _headers(self, reset_s: float, req_budget: float, tok_budget: float, allowed: bool) -> dict[str, str]:
        headers: dict[str, str] = {}
        reset = go_duration(reset_s)
        if self.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(self.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, math.floor(req_budget - self._requests)))
            headers["x-ratelimit-reset-requests"] = reset
        if self.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(tok_budget - self._tokens)))
            headers["x-ratelimit-reset-tokens"] = reset
        if not allowed:
            headers["retry-after"] = str(max(1, math.ceil(reset_s)))  # HTTP wants whole seconds
            headers["retry-after-ms"] = str(max(1, round(reset_s * 1000)))
        return headers
