"""The progress bar of a finite run: documents done/rejected, LLM calls, tokens, rate and ETA."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.metrics import RunSummary


class Progress:
    """Shows a run's `RunSummary` as it grows; a no-op when disabled (not a terminal, or --no-progress)."""

    def __init__(self, total: int | None, *, enabled: bool) -> None:
        self._started = time.monotonic()
        self._bar = None
        if enabled:
            from tqdm import tqdm  # imported only for a bar to draw: not in services' start-up

            self._bar = tqdm(total=total, unit="doc", dynamic_ncols=True, file=sys.stderr)

    def update(self, summary: RunSummary) -> None:
        if self._bar is None:
            return
        tokens = summary.prompt_tokens + summary.completion_tokens
        elapsed = max(time.monotonic() - self._started, 1e-6)
        self._bar.set_postfix(
            rows=summary.rows,
            rejected=sum(summary.rejected.values()),
            calls=summary.calls,
            tokens=tokens,
            tok_per_s=f"{tokens / elapsed:.0f}",
            refresh=False,
        )
        self._bar.update(summary.records - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
