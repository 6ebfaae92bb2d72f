"""Reading WARC and WET files: every page record comes out, and each damaged one is reported where it starts."""

from __future__ import annotations

import gzip
import random
import tracemalloc
import zlib
from pathlib import Path

import pytest

from devtools.warcs import (
    Page,
    crawl_pages,
    request_record,
    response_record,
    warc_record,
    warcinfo_record,
    write_warc,
)
from producers import warc_records
from producers.extract import choose_charset
from producers.warc_records import CrawlRecord, OtherRecord, RecordError, iter_warc


@pytest.mark.parametrize("name", ["pages.warc", "pages.warc.gz"])
def test_page_records_come_out_in_order_with_their_headers(tmp_path: Path, name: str) -> None:
    """Response records carry URL, date, record id and HTTP charset; warcinfo/request records are skipped."""
    pages = crawl_pages()
    records = [warcinfo_record(), request_record(pages[0].url), *(response_record(p) for p in pages)]
    items = list(iter_warc(write_warc(tmp_path / name, records)))
    assert [type(i).__name__ for i in items] == ["OtherRecord", "OtherRecord"] + ["CrawlRecord"] * len(pages)
    assert [i.record_type for i in items[:2] if isinstance(i, OtherRecord)] == ["warcinfo", "request"]
    crawled = [i for i in items if isinstance(i, CrawlRecord)]
    assert [c.url for c in crawled] == [p.url for p in pages]
    assert [c.record_id for c in crawled] == [p.record_id for p in pages]
    assert [c.payload for c in crawled] == [p.body for p in pages]
    assert crawled[1].charset == "iso-8859-1"
    assert all(c.date == "2026-11-20T08:15:00Z" for c in crawled)
    offsets = [i.offset for i in items]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert items[-1].next_offset == (tmp_path / name).stat().st_size


def test_a_resumed_read_starts_at_the_recorded_offset(tmp_path: Path) -> None:
    pages = crawl_pages()
    path = write_warc(tmp_path / "p.warc.gz", [response_record(p) for p in pages])
    items = list(iter_warc(path))
    resumed = list(iter_warc(path, items[2].offset))
    assert [i.record_id for i in resumed if isinstance(i, CrawlRecord)] == [p.record_id for p in pages[2:]]


def test_damaged_records_are_reported_at_their_offset_and_reading_goes_on(tmp_path: Path) -> None:
    """A truncated gzip member, a garbage member, a header without Content-Length and a body cut short."""
    pages = crawl_pages()
    good = [gzip.compress(response_record(p)) for p in pages]
    noise = random.Random(1).randbytes(5000)  # incompressible, so the member is long enough to cut
    truncated = gzip.compress(response_record(Page("https://x.test/cut", noise)))[:3000]
    garbage = gzip.compress(b"this is not a WARC record\r\n\r\n")
    no_length = gzip.compress(response_record(pages[0]).replace(b"Content-Length:", b"Content-Lenght:", 1))
    short = gzip.compress(response_record(pages[1]).replace(b"Content-Length: ", b"Content-Length: 9", 1))
    members = [good[0], truncated, good[1], garbage, good[2], no_length, good[3], short, good[4]]
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(b"".join(members))
    starts = [sum(len(m) for m in members[:i]) for i in range(len(members))]

    items = list(iter_warc(path))
    errors = {i.offset: i.reason for i in items if isinstance(i, RecordError)}
    assert errors == {
        starts[1]: "corrupt_gzip",
        starts[3]: "malformed_record",
        starts[5]: "malformed_record",
        starts[7]: "truncated_record",
    }
    assert [i.url for i in items if isinstance(i, CrawlRecord)] == [p.url for p in pages]


def test_truncated_last_member_and_plain_file_damage(tmp_path: Path) -> None:
    """A file cut mid-member ends with one error; in a plain file, garbage between records is skipped over."""
    pages = crawl_pages()
    members = [gzip.compress(response_record(p)) for p in pages[:2]]
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(members[0] + members[1][: len(members[1]) // 2])
    items = list(iter_warc(path))
    assert isinstance(items[0], CrawlRecord)
    assert isinstance(items[1], RecordError) and items[1].reason == "truncated_gzip"
    assert items[1].offset == len(members[0])

    plain = response_record(pages[0]) + b"junk that is not a record\r\n" + response_record(pages[1])
    (tmp_path / "p.warc").write_bytes(plain)
    items = list(iter_warc(tmp_path / "p.warc"))
    assert [type(i).__name__ for i in items] == ["CrawlRecord", "RecordError", "CrawlRecord"]
    assert items[1].offset == len(response_record(pages[0]))


def test_wet_conversion_records_are_text(tmp_path: Path) -> None:
    text = b"Plain extracted text of a page.\nSecond line."
    record = warc_record("conversion", text, "https://wet.test/a", content_type="text/plain")
    [item] = list(iter_warc(write_warc(tmp_path / "a.wet.gz", [record])))
    assert isinstance(item, CrawlRecord)
    assert (item.record_type, item.payload, item.url) == ("conversion", text, "https://wet.test/a")


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    (tmp_path / "empty.warc.gz").write_bytes(b"")
    assert list(iter_warc(tmp_path / "empty.warc.gz")) == []


@pytest.mark.parametrize(
    ("body", "declared", "expected"),
    [
        ("Grüße aus München".encode(), "iso-8859-1", "utf-8"),  # wrong declaration: valid UTF-8 wins
        ("Grüße aus München".encode("iso-8859-1"), "ISO-8859-1", "iso8859-1"),
        ('<meta charset="windows-1251"><p>Привет, мир</p>'.encode("cp1251"), None, "cp1251"),
        ("\ufeffBOM page".encode("utf-8-sig"), "iso-8859-1", "utf-8"),
        (("Съешь же ещё этих мягких французских булок, да выпей чаю. " * 5).encode("koi8-r"), None, "koi8-r"),
    ],
)
def test_charset_from_bom_utf8_header_meta_then_detection(body: bytes, declared: str | None, expected: str) -> None:
    assert choose_charset(body, declared) == expected


CAP = 1 << 20


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """`MAX_RECORD_BYTES` at 1 MiB, so that records past it stay small enough to write in a test."""
    monkeypatch.setattr(warc_records, "MAX_RECORD_BYTES", CAP)
    return CAP


def _zeros_gzipped(size: int) -> bytes:
    """`size` zero bytes as one gzip member, compressed piecewise (never all held at once)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    piece = bytes(1 << 20)
    out = [deflater.compress(piece) for _ in range(size // len(piece))]
    return b"".join([*out, deflater.flush()])


def _read(path: Path) -> tuple[list[warc_records.Item], int]:
    """The items of a file, and the most memory (bytes) Python held while reading it."""
    tracemalloc.start()
    try:
        items = list(iter_warc(path))
        return items, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_plain_record_over_the_cap_is_too_large_and_the_next_is_read(tmp_path: Path, small_cap: int) -> None:
    big = Page("https://big.test/video", bytes(small_cap + 1000), "video/mp4")
    small = crawl_pages()[0]
    items, _ = _read(write_warc(tmp_path / "p.warc", [response_record(big), response_record(small)]))
    assert [getattr(i, "reason", None) for i in items] == ["record_too_large", None]
    assert isinstance(items[1], CrawlRecord) and items[1].url == small.url


def test_a_gzip_http_body_is_decoded_only_up_to_the_cap(tmp_path: Path, small_cap: int) -> None:
    """A 200 KB record whose gzip-encoded body decodes to 200 MB."""
    body = _zeros_gzipped(200 << 20)
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\r\n" + body
    record = warc_record("response", http, "https://bomb.test/", content_type="application/http; msgtype=response")
    items, _ = _read(write_warc(tmp_path / "b.warc.gz", [record, response_record(crawl_pages()[0])]))
    assert [getattr(i, "reason", None) for i in items] == ["record_too_large", None]


def test_a_gzip_member_is_inflated_only_up_to_the_cap(tmp_path: Path, small_cap: int) -> None:
    """A 200 KB member that inflates to 200 MB is refused having held about the cap, not all of it at once."""
    path = tmp_path / "m.warc.gz"
    path.write_bytes(_zeros_gzipped(200 << 20) + gzip.compress(response_record(crawl_pages()[0])))
    items, peak = _read(path)
    assert [getattr(i, "reason", None) for i in items] == ["record_too_large", None]
    assert peak < 8 * small_cap, f"{peak} bytes held"
