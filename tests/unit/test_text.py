import random

import pytest

from consumers.webr.text import clean, is_refusal, paragraphs, section


def test_paragraphs_split_on_blank_lines_and_drop_markdown_hashes() -> None:
    paras, sep = paragraphs("# Title\n\nFirst para\nstill first\n\n\n## Second\n\n   \n")
    assert paras == ["Title", "First para\nstill first", "Second"]
    assert sep == "\n\n"


def test_paragraphs_fall_back_to_single_newlines() -> None:
    paras, sep = paragraphs("Headline\nBody one.\n\nBody two.")
    assert sep == "\n\n" and paras == ["Headline\nBody one.", "Body two."]
    paras, sep = paragraphs("Headline\nBody one.\nBody two.")
    assert sep == "\n" and paras == ["Headline", "Body one.", "Body two."]


def test_section_keeps_whole_or_a_prefix_about_half_the_time() -> None:
    page = "\n\n".join(f"para {i}" for i in range(10))
    rng = random.Random(7)
    sections = [section(page, rng) for _ in range(2000)]
    whole = sum(s.is_whole for s in sections)
    # whole page: 0.5 directly, plus 1/10 of the prefix draws that pick every paragraph
    assert 0.5 < whole / 2000 < 0.6
    for s in sections:
        assert page.startswith(s.text)
        assert s.text.count("para ") == s.paragraphs_kept
        assert 1 <= s.paragraphs_kept <= 10


def test_section_of_a_page_without_text_does_not_fail() -> None:
    assert section("  \n\n ", random.Random(0)).paragraphs_total == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Here is the request you asked for:\n\nSummarise the text.", "Summarise the text."),
        ("Here's a version:\nDo X.", "Do X."),
        ('"Write a list of the key points."', "Write a list of the key points."),
        ("“Quoted request”", "Quoted request"),
        ("Here are my thoughts on the text only", "Here are my thoughts on the text only"),
        ("  plain answer  ", "plain answer"),
        ('He said "yes" and "no"', 'He said "yes" and "no"'),
    ],
)
def test_clean(raw: str, expected: str) -> None:
    assert clean(raw) == expected


def test_clean_refined_answer_label() -> None:
    assert clean("Improved answer: The river is 20 km long.", refined=True) == "The river is 20 km long."
    assert clean("**Refined Answer:** Yes.", refined=True) == "Yes."
    assert clean("Improved answer: kept", refined=False) == "Improved answer: kept"


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I apologize, but I am unable to fulfil this request.",
        "  I’m sorry, I cannot provide that information.",
        "Sorry, but I won't write that.",
        "As an AI, I cannot browse the web.",
        "As an AI language model, I cannot give medical advice.",
        "I cannot assist with this request.",
        "I'm unable to help with that.",
    ],
)
def test_refusals_detected(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "As an airline pilot, how should I plan my sleep across time zones?",
        "As an aid worker, what vaccinations do I need before a posting?",
        "As an aide to a council member, how do I draft a briefing?",
        "As an AI researcher, which benchmarks should I report?",
        "I'm unable to get my sourdough to rise. What am I doing wrong?",
        "I can't help but wonder why the ferry timetable changes in winter.",
        "I'm sorry to bother you, but how do I reset my library PIN?",
        "I apologize for the delay in shipping your order; it leaves our warehouse on Monday.",
        "The minister said she was sorry for the delays.",
    ],
)
def test_user_voice_and_apology_letters_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_every_section_is_a_text_prefix_of_the_normalised_page() -> None:
    """The persona call sees the normalised page; later calls a section: they must share a prefix."""
    from consumers.webr.text import normalise

    page = "# Big headline\n\nFirst para.\n\n## Sub\n\nSecond para.\nline two"
    norm = normalise(page)
    assert norm.startswith("Big headline\n\nFirst para.")
    rng = random.Random(1)
    for _ in range(50):
        assert norm.startswith(section(norm, rng).text)
    assert normalise(norm) == norm
