"""Output-quality filters on real SmolLM2-135M-Instruct outputs (recorded by tests/support/record_outputs.py and
labelled by a person reading them) and on hand-written cases for each threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumers.webr.quality import (
    QualitySettings,
    copied_request,
    inspect_persona,
    inspect_request,
    inspect_response,
    wrong_language,
)
from consumers.webr.text import clean, normalise

REPO = Path(__file__).resolve().parents[2]
RECORDED = json.loads((REPO / "tests/fixtures/smollm2_outputs.json").read_text(encoding="utf-8"))
PAGES = {
    doc["id"]: normalise(doc["webpage"])
    for doc in map(json.loads, (REPO / "tests/fixtures/smollm2_pages.jsonl").read_text(encoding="utf-8").splitlines())
}
DEFAULTS = QualitySettings()


# The request each recorded response answers: the record of the same page and seed for the same branch.
REQUESTS = {(r["doc_id"], r.get("seed", 1), r["step"]): clean(r["text"]) for r in RECORDED}


def _verdict(record: dict) -> str | None:
    """What the filters say about a recorded output, checked as the pipeline checks its step."""
    step, s = record["step"], DEFAULTS
    text, page = clean(record["text"], refined=step == "refine"), PAGES[record["doc_id"]]
    if step == "persona":
        flaw = inspect_persona(text, s)
    elif step.startswith("request"):
        flaw = inspect_request(text, page, s, wi=step == "request_wi")
    else:
        wi = step == "response_wi"
        request = REQUESTS[(record["doc_id"], record.get("seed", 1), "request_wi" if wi else "request_wr")]
        flaw = inspect_response(text, page, request, s, wi=wi)
    return flaw.reason if flaw else None


CHECKED = [r for r in RECORDED if r["expect"] != "not_filtered"]  # rollouts are never training text


@pytest.mark.parametrize("record", CHECKED, ids=[f"{r['doc_id']}-{r['step']}-{r.get('seed', 1)}" for r in CHECKED])
def test_recorded_output_gets_the_verdict_a_reader_gave_it(record: dict) -> None:
    if "missed" in record:  # a known blind spot, kept visible: the reader's label stays, the filter lets it by
        assert _verdict(record) is None, record["missed"]
    else:
        assert _verdict(record) == record["expect"], record["text"][:300]


def test_recordings_include_degenerate_and_clean_outputs_of_every_kind() -> None:
    expects = {r["expect"] for r in CHECKED}
    assert {None, "repetitive_persona", "repetitive_request", "repetitive_response"} <= expects
    assert {r["finish_reason"] for r in RECORDED} == {"stop", "length"}


def test_a_persona_that_says_the_same_thing_three_times_is_rejected() -> None:
    persona = (
        "The document is about the 2011 report on education in the state, and it is about the 2011 report on "
        "education in the state, and it is about the 2011 report on education in the state."
    )
    flaw = inspect_persona(persona, DEFAULTS)
    assert flaw is not None
    assert flaw.reason == "repetitive_persona"
    assert "repeated 5-word phrases" in flaw.detail


def test_a_response_that_repeats_one_sentence_is_rejected_and_one_restatement_is_not() -> None:
    sentence = "Turn the compost heap every two weeks so that air reaches the middle."
    looped = " ".join([sentence] * 3)
    assert inspect_response(looped, PAGES["demo-01-compost"], "", DEFAULTS, wi=True).reason == "repetitive_response"
    fine = (
        f"{sentence} Keep it as damp as a wrung-out sponge, and leave out meat and cooked food, which draw rats. "
        "In autumn spread the finished compost on the beds, or dig it in before the spring planting."
    )
    assert inspect_response(fine, PAGES["demo-01-compost"], "", DEFAULTS, wi=True) is None


def test_rows_of_a_table_and_items_of_a_list_sharing_their_layout_are_not_repetition() -> None:
    """Phrases are taken within a line or table cell: across a row or item boundary, every n-gram spanning
    shared cells ('3 to 5 minutes | just boiled |') or a shared item ending and opening ('three to five minutes.
    - Brew') repeats without the text saying anything twice."""
    page = PAGES["demo-04-sourdough"]
    table = (
        "| Tea | Steeping time | Water |\n|---|---|---|\n"
        "| Black | 3 to 5 minutes | just boiled |\n| Oolong | 3 to 5 minutes | just boiled |\n"
        "| Herbal | 3 to 5 minutes | just boiled |\n| Rooibos | 3 to 5 minutes | just boiled |"
    )
    bullets = (
        "- Brew black tea with boiling water for three to five minutes.\n"
        "- Brew oolong in water just off the boil, three to five minutes.\n"
        "- Brew Darjeeling a little cooler, again three to five minutes.\n"
        "- Brew green tea at 80 °C for two to three minutes."
    )
    assert inspect_response(table, page, "Tabulate steeping times.", DEFAULTS, wi=True) is None
    assert inspect_response(bullets, page, "How long do I brew tea?", DEFAULTS, wi=False) is None


def test_a_loop_is_repetition_on_one_line_or_across_lines() -> None:
    sentence = "Turn the compost heap every two weeks so that air reaches the middle."
    page = PAGES["demo-01-compost"]
    for sep in (" ", "\n", " | "):
        flaw = inspect_response(sep.join([sentence] * 20), page, "", DEFAULTS, wi=True)
        assert flaw is not None and flaw.reason == "repetitive_response", sep
    phrase = "and it keeps the heap warm and it keeps the heap warm and it keeps the heap warm"
    assert inspect_response(f"Turn it weekly.\n{phrase}.", page, "", DEFAULTS, wi=True).reason == (
        "repetitive_response"
    )


def test_length_bounds_of_request_and_response() -> None:
    s = QualitySettings(min_request_words=3, max_request_words=10, min_response_words=2, max_response_words=5)
    page = PAGES["demo-01-compost"]
    assert inspect_request("Why?", page, s, wi=True).reason == "short_request"
    assert inspect_request("one two three four five six seven eight nine ten eleven", page, s, wi=False).reason == (
        "long_request"
    )
    assert inspect_request("How do I compost?", page, s, wi=True) is None
    request = "How do I compost?"
    assert inspect_response("Mix.", page, request, s, wi=False).reason == "short_response"
    assert inspect_response("Mix greens and browns and turn it.", page, request, s, wi=False).reason == "long_response"
    assert inspect_response("Mix greens, browns.", page, request, s, wi=True) is None


def test_a_wi_request_that_pastes_the_page_back_is_rejected() -> None:
    page = PAGES["demo-03-library-hours"]
    pasted = page.split("\n\n")[1]  # the first paragraph after the title, verbatim
    flaw = inspect_request(pasted, page, DEFAULTS, wi=True)
    assert flaw is not None
    assert flaw.reason == "copied_request"
    quoting = "Write a notice for parents about the Sunday opening, quoting 'open from 10 am to 4 pm' once."
    assert copied_request(quoting, page, DEFAULTS.max_request_copy) is None


def test_a_wr_request_may_be_the_question_on_the_page_word_for_word() -> None:
    """WR back-translates the request a page answers; on a page of questions and answers that is its question,
    and the request alone is the training prompt, so nothing is pasted twice."""
    question = "How do I renew a book that is already overdue at the Market Street library?"
    faq = f"Library FAQ\n\n{question}\n\nLog in to your account and press Renew; overdue books can be renewed once."
    assert inspect_request(question, faq, DEFAULTS, wi=False) is None
    assert inspect_request(question, faq, DEFAULTS, wi=True).reason == "copied_request"


def test_a_wi_response_in_another_language_than_its_page() -> None:
    """WI's training prompt holds the page: the response answers in the page's language."""
    french_page = PAGES["demo-06-marche"]
    english = next(r["text"] for r in RECORDED if r["doc_id"] == "demo-06-marche" and r["step"] == "persona")
    flaw = wrong_language(english, french_page)
    assert flaw is not None
    assert flaw.reason == "wrong_language_response"
    assert "response in en" in flaw.detail and "page in fr" in flaw.detail
    assert wrong_language("Oui.", french_page) is None  # too short to tell
    off = QualitySettings(response_language=False)
    assert inspect_response(english, french_page, "Summarise the text.", off, wi=True) is None
    assert inspect_response(english, french_page, "Summarise the text.", DEFAULTS, wi=True).reason == (
        "wrong_language_response"
    )


def test_a_wr_response_answers_in_its_request_s_language_whatever_the_page_s() -> None:
    """WR's training prompt is the request alone: an English question about a French page is answered in
    English, and a French answer to it is the wrong language."""
    french_page = PAGES["demo-06-marche"]
    request = "When does the Saturday market come back to the church square, and what will the stalls sell?"
    english = "It is back from this Saturday: about thirty local producers sell vegetables, cheese, bread and flowers."
    french = "Une trentaine de producteurs de la région vendront des légumes, du fromage, du pain et des fleurs."
    assert inspect_response(english, french_page, request, DEFAULTS, wi=False) is None
    flaw = inspect_response(french, french_page, request, DEFAULTS, wi=False)
    assert flaw is not None
    assert flaw.reason == "wrong_language_response"
    assert "response in fr" in flaw.detail and "request in en" in flaw.detail


def test_settings_refuse_thresholds_out_of_range() -> None:
    with pytest.raises(ValueError, match="max_repetition"):
        QualitySettings(max_repetition=0)
    with pytest.raises(ValueError, match="max_request_copy"):
        QualitySettings(max_request_copy=1.5)


def test_consume_flags_reach_the_filters_and_defaults_are_the_filters_own() -> None:
    from streamer.settings import ConsumeSettings

    run = {"source": "pages.jsonl", "output": "out", "base_url": "http://vllm:8000/v1"}
    quality = ConsumeSettings.load({**run, "max_repetition": 0.5, "response_language": False}).webr.quality
    assert quality == QualitySettings(max_repetition=0.5, response_language=False)
    assert ConsumeSettings.load(run).webr.quality == QualitySettings()
