"""The prompts of every WebR call, versioned as a whole by `PROMPT_VERSION`.

Layout rule: every call that carries the page sends the same system message and starts its user message with
the same page block, so a document's calls share one long prefix that vLLM's automatic prefix caching and
OpenAI's prompt caching can reuse. Everything specific to a step comes after the page.

Change any wording here -> bump `PROMPT_VERSION` (it is written into every output row).
"""

from __future__ import annotations

from consumers.llm.types import Message

PROMPT_VERSION = "webr-v2"
SYSTEM = "You are a helpful assistant."


def _page_block(page: str) -> str:
    return f"<document>\n{page}\n</document>\n\n"


def _with_page(page: str, task: str) -> list[Message]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _page_block(page) + task}]


def persona_messages(page: str) -> list[Message]:
    """Step 1: who probably wrote this page (fed into the request step so requests fit its audience)."""
    return _with_page(
        page,
        "Read the document above and describe the person who most likely wrote it: their profession, "
        "expertise, interests and the audience they write for. Answer in one sentence of about 30 words, "
        "starting with 'The author'. Give the description only.",
    )


def _wi_task(persona: str, noun: str, words: int, part: bool) -> str:
    """The WI request names the text without a direction: the training prompt puts the page before or after it
    (`training_prompt`), so a request saying 'the text above' would point the wrong way half the time."""
    focus = (
        "Pick one specific piece of the document (a paragraph, a claim, a list, a set of figures) and make the "
        f"{noun} about that piece only, quoting or naming it precisely enough that there is no doubt which part "
        "is meant."
        if part
        else f"The {noun} must be about the document as a whole."
    )
    return (
        f"Author profile: {persona}\n\n"
        f"Imagine a reader of this author who has the document in front of them and asks an AI assistant "
        f"to do something with it. Write that {noun}. {focus} Ask for a transformation of the content into a "
        f"different form: for example a summary for a given audience, a set of notes, a table, a letter, a "
        f"dialogue, a list of questions, a change of tone or format. Spell out concrete constraints: length, "
        f"style, structure, format, audience. Do not use the words 'rewrite' or 'new version'. "
        f"Refer to it only as 'the text' or 'the document', without saying where it is (it may come before or "
        f"after the {noun}); do not copy it. "
        f"Keep the {noun} under {words} words and reply with the {noun} alone, without any preamble."
    )


def _wr_task(persona: str, noun: str, words: int, part: bool) -> str:
    target = (
        "one specific part of the document above (a paragraph, a passage or a set of facts of your choosing)"
        if part
        else "the document above"
    )
    return (
        f"Author profile: {persona}\n\n"
        f"Suppose {target} were the ideal answer an AI assistant gave to a user. Work out the {noun} that "
        f"user most likely asked, in the voice of someone from the author's audience. The {noun} must stand on "
        f"its own: it must not mention or assume any document, article or text. "
        f"Keep it under {words} words and reply with the {noun} alone, without any preamble."
    )


def request_messages(page: str, persona: str, *, wi: bool, part: bool, noun: str, words: int) -> list[Message]:
    """Step 4: the instruction a user would give, about the page (WI) or answered by it (WR)."""
    task = (_wi_task if wi else _wr_task)(persona, noun, words, part)
    return _with_page(page, task)


def wi_response_messages(page: str, request: str) -> list[Message]:
    """Step 5 (WI): carry out the request on the page; the reply is the training response."""
    return _with_page(page, f"{request}\n\nCarry out the request above on the document. Reply with the result only.")


def rollout_messages(request: str) -> list[Message]:
    """Step 6a (WR): a first answer from the model's own knowledge. No page on purpose."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]


def refine_messages(page: str, request: str, rollout: str) -> list[Message]:
    """Step 6b (WR): improve the first answer using the page as the reference for facts."""
    return _with_page(
        page,
        f"A user asked:\n<request>\n{request}\n</request>\n\n"
        f"A first answer was:\n<answer>\n{rollout}\n</answer>\n\n"
        "Using the document as the reference, write an improved answer to the user's request: correct every "
        "factual error against the document, keep what was right, make it complete, clear and well organised. "
        "Do not mention the document or the first answer. Reply with the improved answer only.",
    )


def training_prompt(page: str, request: str, page_first: bool) -> str:
    """The WI user turn: page and request in a per-document random order."""
    return f"{page}\n\n{request}" if page_first else f"{request}\n\n{page}"
