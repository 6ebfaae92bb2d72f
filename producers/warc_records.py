"""Read WARC and WET files record by record, surviving the damage real crawl files carry.

fastwarc parses each record (WARC headers, HTTP headers, chunked and gzip transfer encodings), but its iterator
stops at the first corrupt record and a truncated gzip member silently ends the file. So this module finds the
record boundaries itself: in a gzipped file every record is its own gzip member (the WARC convention), which is
decompressed on its own; in a plain file the WARC `Content-Length` gives the next boundary. A member or record that
cannot be read becomes a `RecordError` with its byte offset, and reading resynchronises at the next gzip header or
`WARC/1.` line, so one bad record never costs the rest of the file.

Every record is identified by its byte offset in the file (of its gzip member in a gzipped file): that is what the
progress store records, and where a resumed run seeks to.
"""

from __future__ import annotations

import mmap
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastwarc.warc import WarcRecord, WarcRecordType

GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/1."
MAX_RECORD_BYTES = 64 << 20
"""A record larger than this (decompressed) is reported as too large instead of being held in memory."""

_FEED = 1 << 20
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)
_TEXT_TYPES = WarcRecordType.response | WarcRecordType.resource | WarcRecordType.conversion


@dataclass(frozen=True, slots=True)
class RecordError:
    """A record that could not be read: `reason` is a stable code, `offset` where it starts."""

    offset: int
    next_offset: int
    reason: str
    detail: str

    @property
    def location(self) -> str:
        return f"byte {self.offset}"


@dataclass(frozen=True, slots=True)
class CrawlRecord:
    """One WARC record with a page in it: an HTTP response, a resource or a WET text conversion."""

    offset: int
    next_offset: int
    record_type: str
    record_id: str
    url: str | None
    date: str | None
    content_type: str | None
    charset: str | None
    payload: bytes
    language_hint: str | None
    index: int = 0
    """Its place among the records of its gzip member (0 in a plain file): `offset` alone is shared by them."""

    @property
    def location(self) -> str:
        return f"byte {self.offset}"

    @property
    def position(self) -> str:
        """Unique within the file, unlike the WARC-Record-ID (which may be missing or repeated): what a resumed run
        matches the messages an earlier run sent by."""
        return f"{self.offset}:{self.index}"


@dataclass(frozen=True, slots=True)
class OtherRecord:
    """A record with no page in it (warcinfo, request, metadata, revisit): skipped, but it moves progress on."""

    offset: int
    next_offset: int
    record_type: str


Item = CrawlRecord | OtherRecord | RecordError


def iter_warc(path: str | Path, start: int = 0) -> Iterator[Item]:
    """Every record of a WARC or WET file (gzipped or not) from byte `start`, in file order."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:2] == GZIP_MAGIC[:2]:
                yield from _iter_gzip(data, start)
            else:
                yield from _iter_plain(data, start, len(data), base=0)


def _iter_gzip(data: mmap.mmap, pos: int) -> Iterator[Item]:
    end = len(data)
    while pos < end:
        member, consumed, error = _inflate_member(data, pos)
        if error is not None:
            resync = data.find(GZIP_MAGIC, pos + 1)
            next_offset = end if resync < 0 else resync
            reason = error[0]
            if reason in ("truncated_gzip", "corrupt_gzip"):
                # Inflating a cut member runs on into the next member's bytes, where it may fail or not: whether
                # another member follows is what tells a cut in mid-file from a file that ends early.
                reason = "corrupt_gzip" if resync >= 0 else "truncated_gzip"
            yield RecordError(pos, next_offset, reason, error[1])
            pos = next_offset
            continue
        next_offset = pos + consumed
        assert member is not None
        items = list(_iter_plain(member, 0, len(member), base=pos))
        # A position inside a member cannot be sought to in the compressed file: a resumed run re-reads the whole
        # member, so only its last item moves progress past it.
        for i, item in enumerate(items):
            yield _at(item, pos, next_offset if i == len(items) - 1 else pos, i)
        pos = next_offset


def _at(item: Item, offset: int, next_offset: int, index: int) -> Item:
    if isinstance(item, RecordError):
        return RecordError(offset, next_offset, item.reason, item.detail)
    if isinstance(item, OtherRecord):
        return OtherRecord(offset, next_offset, item.record_type)
    return CrawlRecord(
        offset,
        next_offset,
        item.record_type,
        item.record_id,
        item.url,
        item.date,
        item.content_type,
        item.charset,
        item.payload,
        item.language_hint,
        index,
    )


def _inflate_member(data: mmap.mmap, pos: int) -> tuple[bytes | None, int, tuple[str, str] | None]:
    """Decompress the gzip member at `pos`: (bytes, compressed length, None) or (None, 0, (reason, detail)).

    Each step inflates at most `_FEED` bytes (the rest of its input waits in `unconsumed_tail`), so a member that
    inflates hugely is refused once past `MAX_RECORD_BYTES` having held no more than that."""
    inflater = zlib.decompressobj(31)
    chunks: list[bytes] = []
    size = 0
    fed = pos
    try:
        while not inflater.eof:
            if inflater.unconsumed_tail:
                chunk = inflater.unconsumed_tail
            else:
                chunk = data[fed : fed + _FEED]
                fed += len(chunk)
            out = inflater.decompress(chunk, _FEED)
            if not out and not chunk:
                return None, 0, ("truncated_gzip", f"gzip member cut off after {fed - pos} bytes")
            size += len(out)
            if size > MAX_RECORD_BYTES:
                return None, 0, ("record_too_large", f"more than {MAX_RECORD_BYTES} bytes decompressed")
            chunks.append(out)
    except zlib.error as exc:
        return None, 0, ("corrupt_gzip", str(exc))
    return b"".join(chunks), fed - pos - len(inflater.unused_data), None


def _iter_plain(data: bytes | mmap.mmap, pos: int, end: int, base: int) -> Iterator[Item]:
    """Records of uncompressed WARC bytes `data[pos:end]`; `base` is added to every reported offset."""
    while True:
        pos = _skip_separators(data, pos, end)
        if pos >= end:
            return
        if data[pos : pos + len(WARC_MAGIC)] != WARC_MAGIC:
            resync = _next_record(data, pos, end)
            yield RecordError(base + pos, base + resync, "malformed_record", "no WARC/1.x version line here")
            pos = resync
            continue
        header_end = data.find(b"\r\n\r\n", pos, min(end, pos + (1 << 20)))
        match = _CONTENT_LENGTH.search(data, pos, header_end + 2) if header_end > 0 else None
        if match is None:
            resync = _next_record(data, pos, end)
            yield RecordError(base + pos, base + resync, "malformed_record", "WARC header without Content-Length")
            pos = resync
            continue
        record_end = header_end + 4 + int(match.group(1))
        if record_end - pos > MAX_RECORD_BYTES:
            after = _skip_separators(data, record_end, end) if record_end <= end else _next_record(data, pos, end)
            detail = f"{record_end - pos} bytes, more than {MAX_RECORD_BYTES}"
            yield RecordError(base + pos, base + after, "record_too_large", detail)
            pos = after
            continue
        if record_end > end:
            resync = _next_record(data, pos, end)
            detail = f"Content-Length {match.group(1).decode()} runs {record_end - end} bytes past the end"
            yield RecordError(base + pos, base + resync, "truncated_record", detail)
            pos = resync
            continue
        after = _skip_separators(data, record_end, end)
        yield _parse(bytes(data[pos:record_end]), base + pos, base + after)
        pos = after


def _skip_separators(data: bytes | mmap.mmap, pos: int, end: int) -> int:
    while pos < end and data[pos : pos + 1] in (b"\r", b"\n"):
        pos += 1
    return pos


def _next_record(data: bytes | mmap.mmap, pos: int, end: int) -> int:
    found = data.find(b"\n" + WARC_MAGIC, pos + 1, end)
    return end if found < 0 else found + 1


def _read_capped(record: WarcRecord) -> bytes | None:
    """The record's body, decoded (a gzip or chunked HTTP body can be far larger than the record): None once past
    `MAX_RECORD_BYTES`, read `_FEED` bytes at a time so that no more than that is ever held."""
    chunks: list[bytes] = []
    size = 0
    while chunk := record.reader.read(_FEED):
        size += len(chunk)
        if size > MAX_RECORD_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes, offset: int, next_offset: int) -> Item:
    try:
        record = WarcRecord.from_bytes(raw)
    except OSError as exc:
        return RecordError(offset, next_offset, "malformed_record", str(exc))
    record_type = record.record_type
    name = str(record_type)
    if not record_type & _TEXT_TYPES:
        return OtherRecord(offset, next_offset, name)
    headers = record.headers
    if record_type == WarcRecordType.response and record.is_http:
        try:
            record.parse_http(auto_decode="all")
        except OSError as exc:
            return RecordError(offset, next_offset, "malformed_http", str(exc))
        content_type = record.http_content_type
        charset = record.http_charset
    else:
        content_type = headers.get("Content-Type")
        charset = None
    payload = _read_capped(record)
    if payload is None:
        return RecordError(offset, next_offset, "record_too_large", f"body over {MAX_RECORD_BYTES} bytes decoded")
    return CrawlRecord(
        offset=offset,
        next_offset=next_offset,
        record_type=name,
        record_id=headers.get("WARC-Record-ID", "").strip("<>"),
        url=headers.get("WARC-Target-URI"),
        date=headers.get("WARC-Date"),
        content_type=content_type,
        charset=charset,
        payload=payload,
        language_hint=headers.get("WARC-Identified-Content-Language"),
    )
