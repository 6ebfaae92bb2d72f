"""From an HTTP payload to the page's main text: charset decoding, then main-content extraction.

Extraction uses resiliparse's `extract_plain_text(main_content=True)` rather than trafilatura: it is a C++ DOM
walk, several times faster per page (docs/performance.md), and it ships in the same wheel family as fastwarc.
trafilatura's heuristics keep slightly cleaner article bodies on some layouts; at crawl scale the speed wins, and
the quality filters after extraction catch what the simpler heuristics let through.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain",)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


@dataclass(frozen=True, slots=True)
class Extracted:
    """The page's main text, the share of its visible text that is, and the charset the bytes were read in."""

    text: str
    main_share: float
    charset: str


def _known(label: str | None) -> str | None:
    if not label:
        return None
    try:
        return codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None


def choose_charset(payload: bytes, declared: str | None) -> str:
    """The encoding to read a page in.

    A BOM wins; then UTF-8 if the bytes are valid UTF-8 (non-ASCII text that happens to be valid UTF-8 is almost
    never another encoding, while servers that declare latin-1 for UTF-8 pages are common); then the HTTP header's
    charset, then the HTML `<meta charset>`, then uchardet's guess, then windows-1252.
    """
    for bom, name in _BOMS:
        if payload.startswith(bom):
            return name
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return "utf-8"
    meta = _META_CHARSET.search(payload, 0, 4096)
    for candidate in (declared, meta.group(1).decode("ascii") if meta else None):
        name = _known(candidate)
        if name is not None and name != "utf-8":
            return name
    return _known(detect_encoding(payload)) or "cp1252"


def decode(payload: bytes, declared: str | None) -> tuple[str, str]:
    """(text, charset): invalid bytes in the chosen charset are replaced, never fatal."""
    charset = choose_charset(payload, declared)
    return bytes_to_str(payload, charset, errors="replace", fallback_encodings=("cp1252",)), charset


def is_html(content_type: str | None, payload: bytes) -> bool:
    """HTML by its Content-Type, or by its first bytes when the type is missing."""
    if content_type:
        return content_type.split(";")[0].strip().lower() in HTML_TYPES
    head = payload[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def extract_html(payload: bytes, declared_charset: str | None) -> Extracted:
    """Main text of an HTML page; `main_share` = main text length / all visible text length (boilerplate signal)."""
    html, charset = decode(payload, declared_charset)
    tree = HTMLTree.parse(html)
    main = extract_plain_text(tree, main_content=True, preserve_formatting=True, list_bullets=True)
    visible = extract_plain_text(tree, main_content=False, preserve_formatting=False)
    share = len(main) / len(visible) if visible else 0.0
    return Extracted(text=main.strip(), main_share=min(share, 1.0), charset=charset)
