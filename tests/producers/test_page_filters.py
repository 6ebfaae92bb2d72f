"""Extraction, language id and the quality filters on realistic pages, with no broker involved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.warcs import ARTICLES, article_html, crawl_pages
from producers.extract import extract_html
from producers.filters import FilterConfig, check
from producers.language import LanguageIdentifier
from producers.pages import PageOptions, text_key, to_page, url_key
from producers.warc_records import CrawlRecord

PROSE = "\n\n".join(ARTICLES["en"])


def _record(url: str, body: bytes, content_type: str | None = "text/html; charset=utf-8") -> CrawlRecord:
    """What the reader makes of an HTTP response with this Content-Type."""
    charset = content_type.partition("charset=")[2] or None if content_type else None
    mime = content_type.split(";")[0] if content_type else None
    return CrawlRecord(0, 1, "response", "urn:uuid:1", url, "2026-11-20T08:15:00Z", mime, charset, body, None)


@pytest.fixture(scope="module")
def langid() -> LanguageIdentifier:
    return LanguageIdentifier()


def test_main_text_drops_navigation_scripts_and_footer() -> None:
    extracted = extract_html(article_html("en", "A garden for Elm Street").encode(), "utf-8")
    assert "Volunteers cleared the abandoned lot" in extracted.text
    for boilerplate in ("dataLayer", "font-family", "Contact", "All rights reserved", "Ten tips"):
        assert boilerplate not in extracted.text
    assert 0.5 < extracted.main_share <= 1.0


def test_every_test_page_is_kept_with_its_language_and_charset(langid: LanguageIdentifier) -> None:
    expected = {"en": "utf-8", "de": "iso8859-1", "fr": "utf-8", "ru": "cp1251", "zh": "gb18030"}
    for page in crawl_pages():
        result = to_page(_record(page.url, page.body, page.content_type), langid, PageOptions())
        assert result.reason is None, (page.url, result.reason)
        assert result.document is not None
        meta = result.document.metadata
        assert expected[meta["language"]] == meta["charset"]
        assert meta["language_score"] > 0.9
        assert result.document.url == page.url


def test_language_selection_and_non_html(langid: LanguageIdentifier) -> None:
    options = PageOptions(languages=frozenset({"de", "fr"}))
    kept = [to_page(_record(p.url, p.body, p.content_type), langid, options) for p in crawl_pages()]
    assert [k.document.metadata["language"] for k in kept if k.document] == ["de", "fr"]
    assert [k.reason for k in kept if k.document is None] == ["language"] * 3
    png = to_page(_record("https://x.test/a.png", b"\x89PNG\r\n\x1a\n....", "image/png"), langid, PageOptions())
    assert png.reason == "not_html"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\n".join(f"- item number {i} in a very long list of links" for i in range(40)), "gopher_bullet_lines"),
        ("\n".join(f"Read more about story {i} and what happened next..." for i in range(40)), "gopher_ellipsis_lines"),
        (" ".join(f"#tag{i} #x{i}" for i in range(80)), "gopher_symbol_ratio"),
        (" ".join(["supercalifragilisticexpialidocious-antidisestablishment"] * 3 + ["x"] * 10), "gopher_word_count"),
        (" ".join(f"{i:04d} {i * 7:05d} price {i * 13:05d}" for i in range(100)), "gopher_alpha_words"),
        (" ".join(f"garden{i} tomato{i} volunteer{i} rainwater{i}" for i in range(30)), "gopher_stop_words"),
    ],
)
def test_gopher_quality_rules_name_their_reason(text: str, reason: str) -> None:
    assert check(text, "en", None, FilterConfig(min_chars=0, gopher_repetition=False)) == reason
    assert check(text, "en", None, FilterConfig(min_chars=0, gopher_repetition=False, gopher_quality=False)) is None


def test_repeated_lines_and_paragraphs() -> None:
    lines = "\n".join(["Click here to subscribe to our newsletter today"] * 20)
    assert check(lines, "en", None, FilterConfig()) == "gopher_dup_lines"
    paragraphs = "\n\n".join([PROSE, "Subscribe to our newsletter for weekly garden news and events."] * 3)
    assert check(paragraphs, "en", None, FilterConfig()) == "gopher_dup_lines"
    assert check("Too short.", "en", None, FilterConfig()) == "too_short"


def test_prose_passes_and_repeated_ngrams_do_not(langid: LanguageIdentifier) -> None:
    assert check(PROSE, "en", 0.9, FilterConfig()) is None
    spam = PROSE + "\n\n" + " ".join(["buy cheap garden tools now"] * 40)
    assert check(spam, "en", 0.9, FilterConfig()) == "gopher_top_2gram"
    assert check(spam, "en", 0.9, FilterConfig(gopher_repetition=False)) is None
    repeated_sentences = " ".join(ARTICLES["en"]) + " " + ARTICLES["en"][1]  # one line: no duplicate lines
    assert check(repeated_sentences, "en", 0.9, FilterConfig()) == "gopher_dup_5gram"


def test_boilerplate_share_and_length_bounds_are_configurable() -> None:
    assert check(PROSE, "en", 0.01, FilterConfig()) == "boilerplate"
    assert check(PROSE, "en", 0.01, FilterConfig(min_main_share=None)) is None
    assert check(PROSE, "en", 0.9, FilterConfig(max_chars=100)) == "too_long"
    assert check(PROSE, "en", 0.9, FilterConfig(min_chars=10_000)) == "too_short"


def test_word_rules_skip_languages_without_spaces() -> None:
    chinese = "\n\n".join(ARTICLES["zh"])
    assert check(chinese, "zh", 0.9, FilterConfig()) is None


def test_dedup_keys_normalise_case_punctuation_whitespace_and_urls() -> None:
    assert text_key("Hello,  World!\nSecond line.") == text_key("hello world second line")
    assert text_key("Hello world") != text_key("Hello there world")
    assert url_key("HTTPS://Example.org:443/a?b=1#frag") == url_key("https://example.org/a?b=1")
    assert url_key("https://example.org/a?b=1") != url_key("https://example.org/a?b=2")


def test_language_id_works_without_network_or_model_cache(tmp_path: Path) -> None:
    """The lite model ships in the wheel: with no proxy reachable and an empty home, detection still works."""
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "FTLANG_CACHE": str(tmp_path / "ftlang"),
    }
    code = (
        "from producers.language import LanguageIdentifier as L; "
        "print(L().identify('Der Garten wurde im Frühjahr von den Nachbarn eröffnet.').code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "de"
    assert not any(tmp_path.rglob("*.bin")), "a model was downloaded"
