"""Error classes from status codes, headers and body fields; wait hints from OpenAI's header formats."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from consumers.llm.errors import (
    AttemptFailed,
    classify_exception,
    classify_reply,
    classify_status,
    parse_completion,
    parse_duration,
    retry_after_s,
)
from consumers.llm.types import ErrorKind


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("2", 2.0), ("20us", 2e-5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "-3", "1s garbage", None])
def test_unreadable_durations(text: str | None) -> None:
    assert parse_duration(text) is None


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert retry_after_s({"Retry-After": "2", "retry-after-ms": "350"}) == pytest.approx(0.35)


def test_retry_after_seconds() -> None:
    assert retry_after_s({"Retry-After": "3"}) == 3.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_reset_of_the_exhausted_dimension_is_used() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-reset-requests": "6m0s",  # requests still available: not what refused us
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "750ms",
    }
    assert retry_after_s(headers) == pytest.approx(0.75)


def test_no_hint() -> None:
    assert retry_after_s({"content-type": "application/json"}) is None
    assert retry_after_s(None) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, ErrorKind.RATE_LIMITED),
        (500, ErrorKind.TRANSIENT),
        (502, ErrorKind.TRANSIENT),
        (503, ErrorKind.TRANSIENT),
        (408, ErrorKind.TRANSIENT),
        (400, ErrorKind.PERMANENT),
        (401, ErrorKind.PERMANENT),
        (404, ErrorKind.PERMANENT),
        (422, ErrorKind.PERMANENT),
    ],
)
def test_status_classes(status: int, kind: ErrorKind) -> None:
    assert classify_status(status).kind is kind


def test_error_reply_carries_the_wait_hint() -> None:
    body = {"error": {"message": "whatever the text says, it is not read", "type": "x", "code": "rate_limit_exceeded"}}
    failure = classify_reply(429, {"retry-after": "7"}, orjson.dumps(body))
    assert (failure.kind, failure.status, failure.retry_after_s) == (ErrorKind.RATE_LIMITED, 429, 7.0)
    assert "rate_limit_exceeded" in failure.reason  # the code field, for the log; never used to decide


def test_error_reply_without_a_json_body_is_classified_by_status() -> None:
    failure = classify_reply(502, {}, b"<html>Bad Gateway</html>")
    assert (failure.kind, failure.status, failure.reason) == (ErrorKind.TRANSIENT, 502, "HTTP 502")


def test_timeout_and_connection_errors_are_transient() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    errors = [
        TimeoutError(),
        aiohttp.ServerTimeoutError("read"),
        aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("cut"),
        ConnectionResetError(),
    ]
    for exc in errors:
        failure = classify_exception(exc)
        assert failure is not None and failure.kind is ErrorKind.TRANSIENT, exc


def test_programming_errors_are_not_classified() -> None:
    assert classify_exception(KeyError("x")) is None


def _body(content: object = "Hi.", finish: str = "stop", usage: object = None) -> bytes:
    message = {"role": "assistant", "content": content}
    payload = {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage is not None:
        payload["usage"] = usage
    return orjson.dumps(payload)


def test_completion_fields() -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}
    completion = parse_completion(_body(usage=usage))
    assert (completion.text, completion.finish_reason) == ("Hi.", "stop")
    assert (completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens) == (11, 3, 4)


def test_missing_usage_is_reported_as_unknown() -> None:
    completion = parse_completion(_body())
    assert completion.prompt_tokens is None and completion.completion_tokens is None


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json",
        b"[1, 2]",
        b'{"choices": []}',
        _body(finish="length"),
        _body(finish="content_filter", content=None),
        _body(content=""),
        _body(content="   \n"),
        _body(content=None),
        _body(content=["parts"]),
    ],
    ids=["not-json", "not-object", "no-choices", "length", "content-filter", "empty", "blank", "null", "not-text"],
)
def test_unusable_output_is_bad_output(body: bytes) -> None:
    with pytest.raises(AttemptFailed) as info:
        parse_completion(body, 200)
    assert info.value.kind is ErrorKind.BAD_OUTPUT
    assert info.value.status == 200


def test_a_proxys_refusal_is_classified_by_its_status() -> None:
    info = aiohttp.RequestInfo(yarl.URL("http://llm.test/v1"), "POST", CIMultiDictProxy(CIMultiDict()))
    refused = aiohttp.ClientHttpProxyError(info, (), status=407, message="Proxy Authentication Required")
    failure = classify_exception(refused)
    assert failure is not None and (failure.kind, failure.status) == (ErrorKind.PERMANENT, 407)
