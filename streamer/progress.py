"""The progress bar of a finite run: documents done/rejected, LLM calls, tokens, rate and ETA."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from consumers.outcomes import Outcome, PairRow


class Progress:
    """Fed one outcome at a time; a no-op when disabled (not a terminal, or --no-progress)."""

    def __init__(self, total: int | None, *, enabled: bool) -> None:
        self.enabled = enabled
        self.rows = self.rejected = self.calls = self.tokens = 0
        self._started = time.monotonic()
        self._bar = tqdm(total=total, unit="doc", dynamic_ncols=True, file=sys.stderr) if enabled else None

    def update(self, outcome: Outcome) -> None:
        if isinstance(outcome, PairRow):
            self.rows += 1
        else:
            self.rejected += 1
        self.calls += outcome.usage.calls
        self.tokens += outcome.usage.prompt_tokens + outcome.usage.completion_tokens
        if self._bar is not None:
            elapsed = max(time.monotonic() - self._started, 1e-6)
            self._bar.set_postfix(
                rows=self.rows, rejected=self.rejected, calls=self.calls, tokens=self.tokens,
                tok_per_s=f"{self.tokens / elapsed:.0f}", refresh=False,
            )
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
