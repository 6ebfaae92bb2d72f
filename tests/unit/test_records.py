import io

import orjson
import pytest

from core.exceptions import InvalidRecord
from core.records import Document, iter_file, parse_message, parse_record, text_doc_id


def test_reference_format_and_optional_fields() -> None:
    doc = parse_record({"webpage": "Some page", "id": 7, "url": "https://x.test/a", "lang": "en"})
    assert doc == Document("7", "Some page", "https://x.test/a", {"lang": "en"})
    assert parse_record({"text": "Other page"}).doc_id == text_doc_id("Other page")


def test_doc_id_is_stable_across_unicode_forms() -> None:
    assert text_doc_id("café") == text_doc_id("cafe\u0301")
    assert text_doc_id("a") != text_doc_id("b")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "not_an_object"),
        ({"title": "no text"}, "missing_text"),
        ({"webpage": 12}, "text_not_string"),
        ({"webpage": "   "}, "empty_text"),
        ({"webpage": "abc\x00\x01def"}, "binary_text"),
        ({"webpage": "ok", "id": {"x": 1}}, "bad_id"),
        ({"webpage": "ok", "url": 3}, "bad_url"),
    ],
)
def test_invalid_records_have_reasons(obj: object, reason: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_record(obj)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"", "empty_message"), (None, "empty_message"), (b"\xff\xfe\x00", "not_utf8"), (b"{nope", "not_json")],
)
def test_invalid_messages(payload: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_message(payload)
    assert info.value.reason == reason


def test_message_round_trip() -> None:
    doc = Document("d1", "page text", "https://u", {"k": [1, 2]})
    assert parse_message(doc.to_json()) == doc


def test_json_array_is_streamed_with_positions() -> None:
    data = orjson.dumps([{"webpage": "a"}, {"nope": 1}, {"webpage": "c", "id": "x", "score": 0.5}])
    records = list(iter_file("mem.json", io.BytesIO(b"  \n" + data)))
    assert [r.position for r in records] == [0, 1, 2]
    assert records[0].document is not None and records[0].document.text == "a"
    assert records[1].error is not None and records[1].error.reason == "missing_text"
    assert "item 1" in records[1].error.detail
    assert records[2].document is not None and records[2].document.metadata == {"score": 0.5}


def test_jsonl_bad_lines_are_rejected_and_reading_goes_on() -> None:
    data = b'{"webpage": "a"}\n\nnot json\n{"webpage": ""}\n{"webpage": "d"}\n'
    records = list(iter_file("mem.jsonl", io.BytesIO(data)))
    assert [r.position for r in records] == [0, 1, 2, 3]
    assert [r.error.reason if r.error else None for r in records] == [None, "not_json", "empty_text", None]
    assert records[1].location == "line 3" and records[1].raw == b"not json"


DEEP = "[" * 300 + "]" * 300
"""Nesting orjson reads (up to 1024 levels) but cannot write back (254)."""


def test_a_field_nested_too_deep_to_write_back_is_invalid_input() -> None:
    payload = b'{"id": "d1", "text": "a page", "extra": ' + DEEP.encode() + b"}"
    with pytest.raises(InvalidRecord) as info:
        parse_message(payload)
    assert info.value.reason == "unserialisable_metadata"
    assert parse_message(b'{"id": "d2", "text": "a page", "extra": [[1]]}').metadata_json == '{"extra":[[1]]}'


def test_unserialisable_records_of_a_json_array_are_rejected_and_reading_goes_on() -> None:
    data = b'[{"webpage": "a", "deep": ' + DEEP.encode() + b'}, {"webpage": "b"}]'
    records = list(iter_file("mem.json", io.BytesIO(data)))
    assert [r.error.reason if r.error else None for r in records] == ["unserialisable_metadata", None]
    assert records[0].error is not None and "item 0" in records[0].error.detail
    assert records[1].document is not None and records[1].document.text == "b"
