"""Input records: validation, normalisation and stable ids, shared by file runs, producers and Kafka consumers.

Every way a record can be unusable maps to an `InvalidRecord` with a stable reason code, so bad input becomes a
rejected row with a reason instead of an exception that takes the process down.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ijson
import orjson

from core.exceptions import InvalidRecord

TEXT_FIELDS = ("webpage", "text")
"""Where the page text may live: `webpage` is the reference format, `text` what most crawlers emit."""

_RESERVED = {"id", "url", *TEXT_FIELDS}


@dataclass(frozen=True, slots=True)
class Document:
    """One crawled page, normalised. `metadata` keeps every input field this project does not interpret."""

    doc_id: str
    text: str
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_json: str = field(init=False, repr=False, compare=False)
    """`metadata` as the JSON an output row carries, serialised once, when the document is made."""

    def __post_init__(self) -> None:
        # orjson reads 1024 levels of nesting but writes only 254: a record that parsed may not serialise.
        # Found here, it is bad input, not a crash after the document's LLM calls.
        try:
            encoded = orjson.dumps(self.metadata, default=str).decode()
        except orjson.JSONEncodeError as exc:
            raise InvalidRecord("unserialisable_metadata", f"its fields cannot be written as JSON: {exc}") from exc
        object.__setattr__(self, "metadata_json", encoded)

    def to_json(self) -> bytes:
        """The canonical wire form (what producers put on Kafka)."""
        body: dict[str, Any] = {"id": self.doc_id, "webpage": self.text}
        if self.url is not None:
            body["url"] = self.url
        body.update(self.metadata)
        return orjson.dumps(body)


def text_doc_id(text: str) -> str:
    """Stable id of a page without one: a hash of its NFC-normalised text."""
    normalised = unicodedata.normalize("NFC", text).strip()
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).hexdigest()


# Unicode's control characters (category Cc: C0, DEL, C1) less the whitespace that text uses.
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def _looks_binary(text: str) -> bool:
    """NUL bytes or a high share of control characters mean this is not a page of text."""
    if "\x00" in text:
        return True
    sample = text[:4096]
    return len(_CONTROL.findall(sample)) > len(sample) * 0.05


def parse_record(obj: Any) -> Document:
    """Turn one decoded JSON value into a `Document`, or raise `InvalidRecord` saying why not."""
    if not isinstance(obj, dict):
        raise InvalidRecord("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    present = [name for name in TEXT_FIELDS if name in obj]
    if not present:
        raise InvalidRecord("missing_text", f"no {' or '.join(repr(f) for f in TEXT_FIELDS)} field")
    text = obj[present[0]]
    if not isinstance(text, str):
        raise InvalidRecord("text_not_string", f"{present[0]!r} is {type(text).__name__}")
    if not text.strip():
        raise InvalidRecord("empty_text", f"{present[0]!r} is empty")
    if _looks_binary(text):
        raise InvalidRecord("binary_text", "text holds NUL or control bytes")
    raw_id = obj.get("id")
    if raw_id is None:
        doc_id = text_doc_id(text)
    elif isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id).strip():
        doc_id = str(raw_id).strip()
    else:
        raise InvalidRecord("bad_id", f"'id' must be a non-empty string or integer, got {raw_id!r:.80}")
    url = obj.get("url")
    if url is not None and not isinstance(url, str):
        raise InvalidRecord("bad_url", f"'url' must be a string, got {type(url).__name__}")
    metadata = {k: v for k, v in obj.items() if k not in _RESERVED}
    return Document(doc_id=doc_id, text=text, url=url, metadata=metadata)


def parse_message(payload: bytes | None) -> Document:
    """Decode a Kafka message value (UTF-8 JSON object) into a `Document`."""
    if not payload:
        raise InvalidRecord("empty_message", "message value is empty or null")
    try:
        decoded = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord("not_utf8", str(exc)) from exc
    try:
        obj = orjson.loads(decoded)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("not_json", str(exc)) from exc
    return parse_record(obj)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One input record and where it was: `position` is the 0-based index in the file (the file's 'offset')."""

    position: int
    location: str
    document: Document | None
    error: InvalidRecord | None
    raw: bytes


def _first_significant_byte(stream: IO[bytes]) -> bytes:
    while True:
        ch = stream.read(1)
        if not ch or not ch.isspace():
            return ch


def iter_file(path: str | Path, stream: IO[bytes] | None = None) -> Iterator[SourceRecord]:
    """Stream the records of a JSON array or JSONL file without loading it whole.

    A JSONL line that does not parse becomes an invalid record and reading goes on; a JSON array that is
    syntactically broken cannot be resynchronised, so the error is raised with the position reached.
    """
    own = stream is None
    fh: IO[bytes] = open(path, "rb") if stream is None else stream  # noqa: SIM115 - closed below
    try:
        first = _first_significant_byte(fh)
        fh.seek(0)
        if first == b"[":
            yield from _iter_array(fh)
        else:
            yield from _iter_jsonl(fh)
    finally:
        if own:
            fh.close()


def _iter_array(fh: IO[bytes]) -> Iterator[SourceRecord]:
    for position, obj in enumerate(ijson.items(fh, "item", use_float=True)):
        location = f"item {position}"
        try:
            raw = orjson.dumps(obj, default=str)
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes
            err = InvalidRecord("unserialisable_metadata", f"{location}: cannot be written as JSON: {exc}")
            yield SourceRecord(position, location, None, err, b"")
            continue
        yield _source_record(position, location, obj, raw)


def _iter_jsonl(fh: IO[bytes]) -> Iterator[SourceRecord]:
    position = 0
    for line_no, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        location = f"line {line_no}"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            err = InvalidRecord("not_json", f"{location}: {exc}")
            yield SourceRecord(position, location, None, err, line.rstrip(b"\r\n"))
        else:
            yield _source_record(position, location, obj, line.rstrip(b"\r\n"))
        position += 1


def _source_record(position: int, location: str, obj: Any, raw: bytes) -> SourceRecord:
    try:
        return SourceRecord(position, location, parse_record(obj), None, raw)
    except InvalidRecord as exc:
        return SourceRecord(position, location, None, InvalidRecord(exc.reason, f"{location}: {exc.detail}"), raw)
