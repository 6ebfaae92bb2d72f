"""From a WARC record to a `Document` ready for Kafka, or the reason it is dropped.

HTML responses go through charset decoding and main-text extraction; WET conversions and plain-text records are
already text. Then language identification, the `--languages` selection and the quality filters. Exact dedup is not
here: it needs the state store, and lives in the producer.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from core.records import Document, text_doc_id
from producers.extract import TEXT_TYPES, decode, extract_html, is_html
from producers.filters import FilterConfig, check
from producers.language import LanguageIdentifier
from producers.warc_records import CrawlRecord

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class PageOptions:
    """What to keep: `languages` empty means every language."""

    languages: frozenset[str] = frozenset()
    min_language_score: float = 0.0
    filters: FilterConfig = field(default_factory=FilterConfig)


@dataclass(frozen=True, slots=True)
class Page:
    """A document to send, or the reason one record was dropped."""

    document: Document | None
    reason: str | None = None


def text_key(text: str) -> bytes:
    """Exact-duplicate key: the text NFKC-normalised, case-folded, punctuation and whitespace collapsed."""
    normalised = _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def url_key(url: str) -> bytes:
    """Same-URL key: scheme and host lower-cased, default port and fragment dropped, query kept as is."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and (parts.scheme.lower(), port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    normal = urlunsplit((parts.scheme.lower(), host, parts.path or "/", parts.query, ""))
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=16).digest()


def to_page(record: CrawlRecord, langid: LanguageIdentifier, options: PageOptions) -> Page:
    """Decode, extract, identify the language and filter one record."""
    main_share: float | None = None
    if is_html(record.content_type, record.payload):
        extracted = extract_html(record.payload, record.charset)
        text, charset, main_share = extracted.text, extracted.charset, extracted.main_share
    elif record.record_type == "conversion" or (record.content_type or "").split(";")[0].strip() in TEXT_TYPES:
        text, charset = decode(record.payload, record.charset)
        text = text.strip()
    else:
        return Page(None, "not_html")
    if not text:
        return Page(None, "empty_text")
    language = langid.identify(text)
    if options.languages and language.code not in options.languages:
        return Page(None, "language")
    if language.score < options.min_language_score:
        return Page(None, "language_score")
    if reason := check(text, language.code, main_share, options.filters):
        return Page(None, reason)
    metadata = {
        "crawl_date": record.date,
        "warc_record_id": record.record_id,
        "language": language.code,
        "language_score": language.score,
        "charset": charset,
    }
    return Page(Document(doc_id=text_doc_id(text), text=text, url=record.url, metadata=metadata))


def wanted_languages(spec: str | None) -> frozenset[str]:
    """`en,de` -> {"en", "de"}; empty or None means all."""
    return frozenset(code.strip().lower() for code in (spec or "").split(",") if code.strip())
