"""An in-memory chat client that answers from a script: the WebR engine tested without HTTP, in milliseconds.

It implements `consumers.llm.types.ChatClient`. The HTTP client itself is tested against the in-repo fake OpenAI
server (tests/llm/); this one is for the engine and the pipeline above it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from consumers.llm.types import ChatResult, Message

Reply = str | BaseException
"""A scripted answer: the reply's text, or an exception the call raises (`LLMCallError`, or a bug)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One call the engine made."""

    step: str
    priority: int
    messages: list[Message]
    prompt_tokens: int | None = None
    seed: int | None = None
    affinity: str | None = None
    calls_left: int = 1

    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")


class ScriptedChatClient:
    """Answers each call with the next scripted reply of its step (`persona`, `request`, `response`, `rollout`,
    `refine`); a step with nothing left answers `"<step> reply <n>"`, n counting every call so far.

    Usage is deterministic: a quarter of the characters as tokens, one attempt per call, and `price_per_token`
    (None: the cost is unknown, as for a vLLM model without a price). `hold`, when given, keeps every call
    waiting until it is set (a call in flight, for cancellation).
    """

    def __init__(
        self,
        script: Mapping[str, Iterable[Reply]] | None = None,
        *,
        model: str = "scripted-model",
        price_per_token: float | None = 1e-6,
        hold: asyncio.Event | None = None,
    ) -> None:
        self.model = model
        self.price_per_token = price_per_token
        self.hold = hold
        self.drained = False
        self._script: defaultdict[str, deque[Reply]] = defaultdict(deque)
        for step, replies in (script or {}).items():
            self._script[step].extend(replies)
        self.calls: list[Call] = []
        self.results: list[ChatResult] = []
        self.called = asyncio.Event()
        """Set by every call, held or not."""

    async def chat(
        self,
        messages: list[Message],
        *,
        priority: int = 0,
        step: str = "default",
        prompt_tokens: int | None = None,
        seed: int | None = None,
        affinity: str | None = None,
        calls_left: int = 1,
    ) -> ChatResult:
        self.calls.append(Call(step, priority, messages, prompt_tokens, seed, affinity, calls_left))
        self.called.set()
        if self.hold is not None:
            await self.hold.wait()
        queued = self._script[step]
        reply = queued.popleft() if queued else f"{step} reply {len(self.calls)}"
        if isinstance(reply, BaseException):
            raise reply
        prompt = sum(len(m["content"]) for m in messages) // 4
        result = ChatResult(reply, prompt, len(reply) // 4, 0, "stop", 0.0, 1)
        self.results.append(result)
        return result

    def drain(self) -> None:
        self.drained = True

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float | None:
        if self.price_per_token is None:
            return None
        return (prompt_tokens + completion_tokens) * self.price_per_token

    @property
    def steps(self) -> list[str]:
        return [c.step for c in self.calls]
