"""WebR for one document at a time: a chain of LLM calls driven by the state machine, ending as one outcome.

`process()` may run for many documents concurrently; a document's own calls run back to back (each waits for
the previous one) with the document's sequence number as priority, so a started document's next call, its page
warm in the server's prefix cache, goes before a newer document's first, and with the document id as affinity,
so all of them go to the replica that holds that cache. Once the source is exhausted (`drain()`, at the end of a
file run) the documents with the most calls left go first, so the last ones do not run their chains one call
after another while the server idles. The order-dependent dedup is not here: it is the pipeline's stage after
the engine (`consumers.webr.dedup.DedupStage`), which sees outcomes in source order.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from pydantic import BaseModel, ConfigDict, Field

from consumers.llm.tokens import prompt_estimate, truncate_to_tokens
from consumers.llm.types import ChatClient, LLMCallError, Message
from consumers.webr import prompts
from consumers.webr.dedup import DedupSettings
from consumers.webr.plan import Plan, call_seed, document_rng, draw_plan
from consumers.webr.quality import Flaw, QualitySettings, inspect_persona, inspect_request, inspect_response
from consumers.webr.state import DocState, DocumentStateMachine
from consumers.webr.text import clean, is_refusal, normalise, section
from core.exceptions import InvalidRecord
from core.outcomes import Outcome, PairRow, Rejection, SourceRef, Usage
from core.records import Document

log = logging.getLogger(__name__)


class WebRSettings(BaseModel):
    """Knobs of the method itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(default=0, description="seed of every per-document random choice")
    max_page_tokens: int = Field(default=4096, gt=0, description="pages are cut to this many tokens (recorded)")
    max_page_chars: int = Field(
        default=1_000_000, gt=0, description="pages longer than this many characters are rejected (page_too_large)"
    )
    keep_whole_probability: float = Field(
        default=0.5, ge=0.0, le=1.0, description="share of pages kept whole rather than cut to a random span"
    )
    dedup_threshold: float = Field(
        default=0.7, gt=0.0, le=1.0, description="MinHash similarity above which a request is a near duplicate"
    )
    dedup_num_perm: int = Field(default=128, ge=16, description="MinHash permutations of the near-duplicate index")
    quality: QualitySettings = Field(default_factory=QualitySettings)

    def dedup(self) -> DedupSettings:
        return DedupSettings(threshold=self.dedup_threshold, num_perm=self.dedup_num_perm)


class _Rejected(Exception):
    """Internal control flow: a filter said no. Never escapes `process()`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class _Run:
    """Mutable scratchpad of one document's chain."""

    doc: Document
    ref: SourceRef
    seq: int
    machine: DocumentStateMachine
    usage: Usage = field(default_factory=Usage)
    calls_left: int = 0  # LLM calls of the chain not answered yet, this one included


def _reject_flaw(flaw: Flaw | None) -> None:
    """Output-quality filters (consumers/webr/quality.py) reject before dedup, like WebR's own filters."""
    if flaw is not None:
        raise _Rejected(flaw.reason, flaw.detail)


def page_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class DocumentProcessor:
    """Turns documents into outcomes with one LLM client; keeps no state between documents."""

    def __init__(self, llm: ChatClient, settings: WebRSettings) -> None:
        self.llm = llm
        self.settings = settings

    def drain(self) -> None:
        """No new documents will come: from now on the documents with the most calls left go first."""
        self.llm.drain()

    async def process(self, doc: Document, ref: SourceRef, *, seq: int) -> Outcome:
        """Run the chain; every per-document failure becomes a `Rejection` (cancellation propagates)."""
        run = _Run(doc, ref, seq, DocumentStateMachine(doc.doc_id))
        try:
            return await self._chain(run)
        except _Rejected as rej:
            return self._reject(run, rej.reason, rej.detail)
        except LLMCallError as exc:
            run.usage = run.usage + Usage(attempts=exc.attempts)
            return self._reject(run, f"llm_{exc.kind}", f"{exc.reason} (status {exc.status}, {exc.attempts} attempts)")
        except Exception as exc:  # a bug must not take the other documents down; it is logged and recorded
            log.exception("internal error on document %s in state %s", doc.doc_id, run.machine.state)
            return self._reject(run, "internal_error", f"{type(exc).__name__}: {exc}")

    async def _call(self, run: _Run, messages: list[Message], page: str = "", page_tokens: int = 0) -> str:
        """One call of the chain; `page` (of `page_tokens`) is the page text the messages carry, counted once
        per document rather than encoded again for every call's rate-limit estimate."""
        estimate = prompt_estimate(messages, known=page, known_tokens=page_tokens) if page else None
        step = str(run.machine.state)
        seed = call_seed(self.settings.seed, run.doc.doc_id, step)
        result = await self.llm.chat(
            messages,
            priority=run.seq,
            step=step,
            prompt_tokens=estimate,
            seed=seed,
            affinity=run.doc.doc_id,
            calls_left=run.calls_left,
        )
        run.calls_left -= 1
        cost = self.llm.cost_usd(result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        run.usage = run.usage + Usage(
            1, result.prompt_tokens, result.completion_tokens, result.cached_tokens, cost, result.attempts
        )
        return result.text

    async def _chain(self, run: _Run) -> PairRow:
        m = run.machine
        if len(run.doc.text) > self.settings.max_page_chars:
            # Megabytes of "page" are a dump or a crawl artefact: its first tokens would not represent it.
            raise _Rejected("page_too_large", f"{len(run.doc.text)} characters > {self.settings.max_page_chars}")
        capped, page_tokens, truncated = truncate_to_tokens(run.doc.text, self.settings.max_page_tokens)
        page = normalise(capped)
        rng = document_rng(self.settings.seed, run.doc.doc_id)
        # Drawn before the persona call (which draws nothing), so the chain's length is known from its start.
        part = section(page, rng, self.settings.keep_whole_probability)
        # A paragraph prefix of the page: its share of the page's tokens, by characters (an estimate either way).
        part_tokens = page_tokens if part.is_whole else page_tokens * len(part.text) // max(len(page), 1)
        plan = draw_plan(rng)
        run.calls_left = plan.calls

        m.advance(DocState.PERSONA)
        persona = clean(await self._call(run, prompts.persona_messages(page), page, page_tokens))
        if not persona:
            raise _Rejected("empty_persona", "the model returned no author profile")
        _reject_flaw(inspect_persona(persona, self.settings.quality))

        m.advance(DocState.SECTIONED)

        m.advance(DocState.REQUEST)
        request = clean(
            await self._call(
                run,
                prompts.request_messages(
                    part.text,
                    persona,
                    wi=plan.category.is_wi,
                    part=plan.category.is_part,
                    noun=plan.noun,
                    words=plan.words,
                ),
                part.text,
                part_tokens,
            )
        )
        self._require(request, "request")
        _reject_flaw(inspect_request(request, part.text, self.settings.quality, wi=plan.category.is_wi))

        if plan.category.is_wi:
            m.advance(DocState.RESPONSE)
            messages = prompts.wi_response_messages(part.text, request)
            response = clean(await self._call(run, messages, part.text, part_tokens))
            instruction = prompts.training_prompt(part.text, request, plan.page_first)
        else:
            m.advance(DocState.ROLLOUT)
            rollout = clean(await self._call(run, prompts.rollout_messages(request)))
            self._require(rollout, "rollout", refusal=False)
            m.advance(DocState.REFINE)
            messages = prompts.refine_messages(part.text, request, rollout)
            response = clean(await self._call(run, messages, part.text, part_tokens), refined=True)
            instruction = request

        m.advance(DocState.FILTER)
        self._require(response, "response")
        _reject_flaw(inspect_response(response, part.text, request, self.settings.quality, wi=plan.category.is_wi))
        row = self._row(run, plan, persona, request, instruction, response, page, page_tokens, truncated)
        m.advance(DocState.DONE)  # last: a failure building the row is still a rejection at FILTER
        return row

    @staticmethod
    def _require(text: str, what: str, *, refusal: bool = True) -> None:
        """Empty text and (where `refusal`) a refusal make no pair. The rollout is exempt from the refusal: it is
        a draft written without the page, which often declines a question about the page's own facts, and the
        refinement answers it from the page (the paper filters the final response only)."""
        if not text.strip():
            raise _Rejected(f"empty_{what}", f"the model returned an empty {what}")
        if refusal and is_refusal(text):
            raise _Rejected(f"refused_{what}", text[:200])

    def _row(
        self,
        run: _Run,
        plan: Plan,
        persona: str,
        request: str,
        instruction: str,
        response: str,
        page: str,
        page_tokens: int,
        truncated: bool,
    ) -> PairRow:
        return PairRow(
            doc_id=run.doc.doc_id,
            prompt_id=hashlib.sha256(instruction.encode("utf-8")).hexdigest(),
            instruction=instruction,
            response=response,
            request=request,
            branch=plan.category.branch,
            category=plan.category.value,
            persona=persona,
            source_url=run.doc.url,
            model=self.llm.model,
            prompt_version=prompts.PROMPT_VERSION,
            seed=self.settings.seed,
            page_tokens=page_tokens,
            page_truncated=truncated,
            usage=run.usage,
            ref=run.ref,
            created_at=datetime.now(UTC),
            metadata_json=run.doc.metadata_json,
            page_hash=page_hash(page),
        )

    def _reject(self, run: _Run, reason: str, detail: str) -> Rejection:
        stage = run.machine.state
        if not run.machine.terminal:  # never raise here: this is how a document's failure becomes an outcome
            run.machine.advance(DocState.REJECTED)
        log.warning("document %s rejected at %s: %s (%s)", run.doc.doc_id, stage, reason, detail[:200])
        return Rejection(
            doc_id=run.doc.doc_id,
            stage=str(stage),
            reason=reason,
            detail=detail,
            ref=run.ref,
            created_at=datetime.now(UTC),
            source_url=run.doc.url,
            usage=run.usage,
        )

    @staticmethod
    def reject_invalid(error: InvalidRecord, ref: SourceRef, raw: bytes | None) -> Rejection:
        """An input record that never became a document; its `id` is kept when it can still be read."""
        return Rejection(
            doc_id=_salvage_id(raw),
            stage="input",
            reason=error.reason,
            detail=error.detail,
            ref=ref,
            created_at=datetime.now(UTC),
            payload=raw,
        )


def _salvage_id(raw: bytes | None) -> str | None:
    try:
        obj = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
