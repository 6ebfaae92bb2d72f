"""The WebR state machine, branch by branch, with a scripted in-memory chat client (no HTTP, no server)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from consumers.llm.tokens import prompt_estimate
from consumers.llm.types import ErrorKind, LLMCallError
from consumers.webr import prompts
from consumers.webr.processor import DocumentProcessor, WebRSettings, page_hash
from consumers.webr.text import normalise
from core.exceptions import InvalidRecord
from core.outcomes import PairRow, Rejection, SourceRef
from core.records import Document
from tests.support.chat import Reply, ScriptedChatClient
from tests.support.documents import marker, page
from tests.support.plans import plan_of

SEED = 3
REFUSAL = "I'm sorry, but I can't help with that."


def doc_in(branch: str, i: int = 1) -> Document:
    """A document whose seeded plan falls in `branch` ("WI" or "WR"), carrying `page(i)`."""
    for n in range(100):
        doc_id = f"doc-{i}-{n}"
        if plan_of(doc_id, page(i), WebRSettings(seed=SEED)).category.branch == branch:
            return Document(doc_id, page(i), url=f"https://news.test/{i}", metadata={"lang": "en"})
    raise AssertionError(f"no {branch} document in 100 ids")


def run(doc: Document, client: ScriptedChatClient, seq: int = 5, **settings: int) -> PairRow | Rejection:
    processor = DocumentProcessor(client, WebRSettings(seed=SEED, **settings))
    return asyncio.run(processor.process(doc, SourceRef("t", 2, 40, 1_790_000_000_000), seq=seq))


def test_wi_document_is_persona_request_response_with_the_page_leading_every_call() -> None:
    doc = doc_in("WI")
    client = ScriptedChatClient(
        {
            "persona": ["A harbour reporter"],
            "request": ['"List the three budget lines the council discussed, with their amounts."'],
            "response": ["Here is the list:\n- line 18\n- line 19\n- line 20"],
        }
    )
    row = run(doc, client)
    assert isinstance(row, PairRow)
    assert client.steps == ["persona", "request", "response"]
    assert {c.priority for c in client.calls} == {5}, "a document's calls carry its sequence number"
    assert {c.affinity for c in client.calls} == {doc.doc_id}, "and its id, to stay on one replica"
    for call in client.calls:
        assert call.user_text.startswith(f"<document>\n{marker(1)}")
    assert "A harbour reporter" in client.calls[1].user_text
    assert row.persona == "A harbour reporter"
    assert row.request == "List the three budget lines the council discussed, with their amounts."  # unquoted
    assert row.response == "- line 18\n- line 19\n- line 20"  # the "Here is" line dropped
    assert row.branch == "WI" and row.category.startswith("WI")
    assert row.request in row.instruction and marker(1) in row.instruction
    assert row.prompt_id == hashlib.sha256(row.instruction.encode()).hexdigest()
    assert (row.doc_id, row.source_url, row.model, row.seed) == (doc.doc_id, doc.url, "scripted-model", SEED)
    assert row.prompt_version == prompts.PROMPT_VERSION
    assert row.page_hash == page_hash(normalise(doc.text))
    assert row.page_truncated is False and row.metadata_json == '{"lang":"en"}'
    assert row.ref == SourceRef("t", 2, 40, 1_790_000_000_000)
    results = client.results
    assert row.usage.calls == 3 and row.usage.attempts == 3
    assert row.usage.prompt_tokens == sum(r.prompt_tokens for r in results)
    assert row.usage.completion_tokens == sum(r.completion_tokens for r in results)
    assert row.usage.cost_usd == pytest.approx(sum(r.prompt_tokens + r.completion_tokens for r in results) * 1e-6)


def test_wr_document_answers_without_the_page_then_refines_with_it() -> None:
    doc = doc_in("WR")
    client = ScriptedChatClient(
        {
            "request": ["Why does the ferry route change in winter?"],
            "rollout": ["Because fewer people travel."],
            "refine": ["The winter timetable follows the budget line the council cut."],
        },
        price_per_token=None,
    )
    row = run(doc, client)
    assert isinstance(row, PairRow)
    assert client.steps == ["persona", "request", "rollout", "refine"]
    rollout, refine = client.calls[2], client.calls[3]
    assert marker(1) not in rollout.user_text and "Why does the ferry route change in winter?" in rollout.user_text
    assert marker(1) in refine.user_text and "Because fewer people travel." in refine.user_text
    assert row.branch == "WR"
    assert row.instruction == row.request == "Why does the ferry route change in winter?"
    assert row.response == "The winter timetable follows the budget line the council cut."
    assert row.usage.calls == 4 and row.usage.cost_usd is None  # no price known, none invented


def test_a_wi_request_placed_before_its_page_was_never_told_to_call_it_the_text_above() -> None:
    """The training prompt puts the page after the request for about half the WI documents: the request call
    must not have the model point at 'the text above' (nor 'below', which is wrong for the other half)."""
    settings = WebRSettings(seed=SEED)
    ids = (f"doc-1-{n}" for n in range(200))
    shapes: set[tuple[bool, bool]] = set()
    for doc_id in ids:
        plan = plan_of(doc_id, page(1), settings)
        if not plan.category.is_wi or (plan.page_first, plan.category.is_part) in shapes:
            continue
        shapes.add((plan.page_first, plan.category.is_part))
        client = ScriptedChatClient({"request": ["Turn the council report into a table of its budget lines."]})
        row = run(Document(doc_id, page(1)), client)
        assert isinstance(row, PairRow) and row.instruction.startswith(row.request) != plan.page_first
        task = client.calls[1].user_text.split("</document>", 1)[1]
        assert "above" not in task and "below" not in task, task
    assert len(shapes) == 4, "request first and page first, whole and part"


def test_every_call_carries_a_sampling_seed_of_its_run_document_and_step() -> None:
    def seeds(doc: Document, seed: int = SEED) -> list[int | None]:
        client = ScriptedChatClient()
        processor = DocumentProcessor(client, WebRSettings(seed=seed))
        asyncio.run(processor.process(doc, SourceRef("t", 0, 0), seq=0))
        return [call.seed for call in client.calls]

    wr, other = doc_in("WR"), doc_in("WR", 2)
    first = seeds(wr)
    assert len(first) == 4 and None not in first
    assert len(set(first)) == 4, "each step samples with its own seed"
    assert seeds(wr) == first, "a rerun samples with the same seeds"
    assert set(seeds(other)).isdisjoint(first), "another document, other seeds"
    assert set(seeds(wr, SEED + 1)).isdisjoint(first), "another run seed, other seeds"
    assert all(0 <= s < 2**31 for s in first)


@pytest.mark.parametrize(
    ("branch", "step", "reply", "stage", "reason"),
    [
        ("WI", "persona", "  ", "persona", "empty_persona"),
        ("WI", "request", "", "request", "empty_request"),
        ("WI", "request", REFUSAL, "request", "refused_request"),
        ("WI", "response", "", "filter", "empty_response"),
        ("WI", "response", REFUSAL, "filter", "refused_response"),
        ("WR", "request", REFUSAL, "request", "refused_request"),
        ("WR", "rollout", "", "rollout", "empty_rollout"),
        ("WR", "refine", "", "filter", "empty_response"),
        ("WR", "refine", REFUSAL, "filter", "refused_response"),
    ],
)
def test_a_filter_rejects_where_it_stands_and_no_call_follows(
    branch: str, step: str, reply: str, stage: str, reason: str
) -> None:
    client = ScriptedChatClient({step: [reply]})
    outcome = run(doc_in(branch), client)
    assert isinstance(outcome, Rejection)
    assert (outcome.stage, outcome.reason) == (stage, reason)
    assert client.steps[-1] == step, "the chain stops at the step that failed"
    assert outcome.usage.calls == len(client.calls), "the calls made before the rejection are accounted"
    assert outcome.source_url == "https://news.test/1" and outcome.payload is None


def test_a_refused_rollout_is_refined_from_the_page_not_rejected() -> None:
    """The rollout is a draft without the page; declining a question about the page's facts is what the
    refinement, which has the page, corrects."""
    client = ScriptedChatClient({"rollout": [REFUSAL], "refine": ["The council cut budget line 18 in winter."]})
    row = run(doc_in("WR"), client)
    assert isinstance(row, PairRow)
    assert client.steps == ["persona", "request", "rollout", "refine"]
    assert REFUSAL in client.calls[3].user_text
    assert row.response == "The council cut budget line 18 in winter."


@pytest.mark.parametrize(("branch", "kept"), [("WI", False), ("WR", True)])
def test_a_request_copied_from_the_page_is_rejected_in_wi_only(branch: str, kept: bool) -> None:
    """WI's training prompt holds the page, so a pasted request asks nothing; WR's is the request alone."""
    copied = f"{marker(1)} Harbour council meeting report number 1."  # the page's first line, always kept
    outcome = run(doc_in(branch), ScriptedChatClient({"request": [copied]}))
    if kept:
        assert isinstance(outcome, PairRow) and outcome.request == copied
    else:
        assert isinstance(outcome, Rejection)
        assert (outcome.stage, outcome.reason) == ("request", "copied_request")


@pytest.mark.parametrize(("branch", "kept"), [("WI", False), ("WR", True)])
def test_a_response_in_its_request_s_language_not_the_page_s_is_kept_in_wr_only(branch: str, kept: bool) -> None:
    """The response's language is held to the training prompt's: WI's holds the (English) page, WR's is the
    (French) request alone."""
    request = "Quand le conseil du port a-t-il discuté du budget et des lignes de ferry cette année ?"
    answer = "Le conseil du port a discuté des lignes budgétaires et de la ligne de ferry lors de sa réunion."
    outcome = run(doc_in(branch), ScriptedChatClient({"request": [request], "response": [answer], "refine": [answer]}))
    if kept:
        assert isinstance(outcome, PairRow) and outcome.response == answer
    else:
        assert isinstance(outcome, Rejection)
        assert (outcome.stage, outcome.reason) == ("filter", "wrong_language_response")


@pytest.mark.parametrize("kind", list(ErrorKind))
@pytest.mark.parametrize(("step", "made_before"), [("persona", 0), ("request", 1)])
def test_a_failed_call_rejects_with_its_kind_and_counts_its_attempts(kind: ErrorKind, step: str, made_before: int):
    failure = LLMCallError(kind, "no luck", status=503, attempts=4)
    client = ScriptedChatClient({step: [failure]})
    outcome = run(doc_in("WI"), client)
    assert isinstance(outcome, Rejection)
    assert (outcome.stage, outcome.reason) == (step, f"llm_{kind}")
    assert outcome.detail == "no luck (status 503, 4 attempts)"
    assert outcome.usage.calls == made_before
    assert outcome.usage.attempts == made_before + 4


def test_a_bug_in_a_step_becomes_an_internal_error_rejection_not_a_crash() -> None:
    client = ScriptedChatClient({"rollout": [KeyError("missing")]})
    outcome = run(doc_in("WR"), client)
    assert isinstance(outcome, Rejection)
    assert (outcome.stage, outcome.reason, outcome.detail) == ("rollout", "internal_error", "KeyError: 'missing'")


def test_a_huge_page_is_rejected_before_any_call_and_a_long_one_is_cut() -> None:
    client = ScriptedChatClient()
    outcome = run(doc_in("WI"), client, max_page_chars=100)
    assert isinstance(outcome, Rejection)
    assert (outcome.stage, outcome.reason, outcome.usage.calls) == ("received", "page_too_large", 0)
    assert client.calls == []

    long_doc = Document("long", "\n".join(page(i) for i in range(1, 30)))
    row = run(long_doc, client, max_page_tokens=60)
    assert isinstance(row, PairRow)
    assert (row.page_truncated, row.page_tokens) == (True, 60)
    assert marker(29) not in client.calls[0].user_text, "the cut text never reaches the model"


async def test_cancelling_a_document_cancels_its_call_and_yields_no_outcome() -> None:
    hold = asyncio.Event()
    client = ScriptedChatClient(hold=hold)
    processor = DocumentProcessor(client, WebRSettings(seed=SEED))
    task = asyncio.create_task(processor.process(doc_in("WI"), SourceRef("t", 0, 0), seq=1))
    await asyncio.wait_for(client.called.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.results == []


@pytest.mark.parametrize(
    ("raw", "doc_id"),
    [
        (b'{"id": "a-7", "text": ""}', "a-7"),
        (b'{"id": 7}', "7"),
        (b'{"id": true}', None),
        (b'{"id": [1]}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (None, None),
    ],
)
def test_an_invalid_record_keeps_its_payload_and_whatever_id_can_be_read(raw: bytes | None, doc_id: str | None):
    ref = SourceRef("t", 0, 9)
    rejection = DocumentProcessor.reject_invalid(InvalidRecord("empty_text", "'text' is empty"), ref, raw)
    assert (rejection.doc_id, rejection.stage, rejection.reason, rejection.payload) == (
        doc_id,
        "input",
        "empty_text",
        raw,
    )
    assert rejection.ref == ref


def test_replies_are_scripted_per_step_in_order() -> None:
    """The test client itself: queued replies per step, then numbered defaults; errors are raised."""
    replies: list[Reply] = ["first", ValueError("second")]
    client = ScriptedChatClient({"request": replies})
    assert asyncio.run(client.chat([{"role": "user", "content": "x" * 40}], step="request")).text == "first"
    with pytest.raises(ValueError, match="second"):
        asyncio.run(client.chat([], step="request"))
    result = asyncio.run(client.chat([], step="request"))
    assert (result.text, result.prompt_tokens) == ("request reply 3", 0)
    assert client.steps == ["request"] * 3 and len(client.results) == 2


@pytest.mark.parametrize("branch", ["WI", "WR"])
def test_calls_carrying_the_page_come_with_a_prompt_estimate_from_its_one_count(branch: str) -> None:
    """The page is counted once per document; each call's estimate for the rate limiter reuses that count and is
    close to what counting the whole prompt gives (never far under it: under-reserving earns 429s)."""
    doc = doc_in(branch)
    client = ScriptedChatClient({"request": ["Summarise the council's budget lines for a local newsletter."]})
    assert isinstance(run(doc, client), PairRow)
    for call in client.calls:
        if "<document>" not in call.user_text:
            assert call.prompt_tokens is None, "the rollout carries no page: the client counts it"
            continue
        counted = prompt_estimate(call.messages)
        assert call.prompt_tokens is not None
        assert 0.95 * counted <= call.prompt_tokens <= 1.25 * counted, (call.step, call.prompt_tokens, counted)


def test_each_call_tells_the_client_its_chain_s_calls_left_and_drain_reaches_the_client() -> None:
    """The queues for capacity rank by calls left once draining (`types.QueuedCall`); the engine gives every call
    its count and passes `drain()` on."""
    wi, wr = doc_in("WI", 1), doc_in("WR", 2)
    client = ScriptedChatClient()
    processor = DocumentProcessor(client, WebRSettings(seed=SEED))
    processor.drain()
    assert client.drained

    async def both() -> None:
        await asyncio.gather(
            processor.process(wi, SourceRef("t", 0, 0, None), seq=1),
            processor.process(wr, SourceRef("t", 0, 1, None), seq=2),
        )

    asyncio.run(both())
    by_doc = {d.doc_id: [(c.priority, c.calls_left) for c in client.calls if c.affinity == d.doc_id] for d in (wi, wr)}
    assert by_doc[wi.doc_id] == [(1, 3), (1, 2), (1, 1)]  # persona, request, response
    assert by_doc[wr.doc_id] == [(2, 4), (2, 3), (2, 2), (2, 1)]  # persona, request, rollout, refine


class _Nameless(ScriptedChatClient):
    """Answers every call, then fails to name its model: a bug met while the row is built, after the chain."""

    @property  # type: ignore[override]
    def model(self) -> str:
        raise RuntimeError("no model name")

    @model.setter
    def model(self, value: str) -> None:
        pass


def test_a_bug_building_the_row_is_a_rejection_at_filter_not_a_crash() -> None:
    outcome = run(doc_in("WI"), _Nameless())
    assert isinstance(outcome, Rejection)
    assert (outcome.stage, outcome.reason) == ("filter", "internal_error")
    assert outcome.detail == "RuntimeError: no model name"
    assert outcome.usage.calls == 3
