"""Deciding what went wrong with a call: by exception type, status code and response fields, never by message text.

Message strings change between SDK versions and servers (vLLM, proxies); types, status codes and the fields of
the completion body do not. The kind decides the retry policy in `client.py`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp
import orjson

from consumers.llm.types import ErrorKind, LLMCallError

# OpenAI writes reset times as Go durations: "1s", "6m0s", "120ms", "1h2m3.5s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# Statuses that mean "try again" although they are 4xx: request timeout, conflict (OpenAI's SDK retries both).
_TRANSIENT_4XX = frozenset({408, 409})
_BAD_FINISH = frozenset({"length", "content_filter"})


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified failure of one attempt."""

    kind: ErrorKind
    reason: str
    status: int | None = None
    retry_after_s: float | None = None
    truncated: bool = False  # finish_reason "length": a larger max_tokens may fix it


class AttemptFailed(LLMCallError):
    """One attempt failed; carries what the retry policy needs (the server's wait hint)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.kind, failure.reason, status=failure.status)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class Completion:
    """The fields of a chat completion body that the client uses; usage may be missing on some servers."""

    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int


def parse_duration(value: str | None) -> float | None:
    """Seconds from a Go-style duration ("6m0s", "120ms") or a bare number of seconds; None if unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _retry_after_header(value: str) -> float | None:
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    try:  # the HTTP-date form of Retry-After
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """How long the server asks us to wait, from Retry-After or the x-ratelimit-reset-* headers."""
    if not headers:
        return None
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h and (ms := parse_duration(h["retry-after-ms"])) is not None:
        return ms / 1000.0
    if "retry-after" in h and (seconds := _retry_after_header(h["retry-after"])) is not None:
        return seconds
    waits = []
    for dimension in ("requests", "tokens"):
        remaining = h.get(f"x-ratelimit-remaining-{dimension}")
        reset = parse_duration(h.get(f"x-ratelimit-reset-{dimension}"))
        # The reset of a dimension that still has budget is not what refused us.
        if reset is not None and (remaining is None or remaining.strip() in ("0", "0.0")):
            waits.append(reset)
    return max(waits) if waits else None


def _error_code(body: bytes) -> str:
    """The machine-readable `code` (else `type`) of an OpenAI-style error body, for the reason text only."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    code = (error.get("code") or error.get("type")) if isinstance(error, dict) else None
    return f" ({code})" if isinstance(code, str) and code else ""


def classify_status(status: int, headers: Mapping[str, str] | None = None, detail: str = "") -> Failure:
    """Kind of an HTTP error status: 429 rate limited, 5xx/408/409 transient, other 4xx permanent."""
    reason = f"HTTP {status}{detail}"
    if status == 429:
        return Failure(ErrorKind.RATE_LIMITED, reason, status, retry_after_s(headers))
    if status >= 500 or status in _TRANSIENT_4XX:
        return Failure(ErrorKind.TRANSIENT, reason, status, retry_after_s(headers))
    return Failure(ErrorKind.PERMANENT, reason, status)


def classify_reply(status: int, headers: Mapping[str, str], body: bytes) -> Failure:
    """Kind of a non-2xx answer: its status, its wait hints, and the error body's code in the reason."""
    return classify_status(status, headers, _error_code(body))


def classify_exception(exc: BaseException) -> Failure | None:
    """Kind of an exception raised by an HTTP exchange; None for exceptions that are bugs, not call failures.

    Timeouts, refused, reset or dropped connections and bodies cut short are transient. So is a reply aiohttp
    could not read (a bad status line, headers too long, a listener that does not speak HTTP/1): sessions do not
    raise for an error status, so the `ClientResponseError` it raises then carries a status (400, or 0) of its
    own making, not the server's. A proxy's refusal and a redirect loop are real answers, classified by status."""
    if isinstance(exc, aiohttp.ClientHttpProxyError | aiohttp.TooManyRedirects):
        return classify_status(exc.status, exc.headers)
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and ConnectionTimeoutError included
        return Failure(ErrorKind.TRANSIENT, "timeout")
    if isinstance(exc, aiohttp.ClientResponseError):
        return Failure(ErrorKind.TRANSIENT, "unreadable reply")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | ConnectionError):
        return Failure(ErrorKind.TRANSIENT, f"connection error ({type(exc).__name__})")
    return None


def _bad(reason: str, status: int | None = None, *, truncated: bool = False) -> AttemptFailed:
    return AttemptFailed(Failure(ErrorKind.BAD_OUTPUT, reason, status, truncated=truncated))


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_completion(body: bytes, status: int | None = None) -> Completion:
    """Read a chat completion body; raises AttemptFailed(BAD_OUTPUT) for unusable output.

    Unusable: not JSON, not the completion shape, empty content (a structured refusal has none), or a
    finish_reason of "length" (truncated) or "content_filter".
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad("body is not JSON", status) from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _bad("body has no choices", status)
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    finish_reason = choices[0].get("finish_reason")
    if finish_reason in _BAD_FINISH:
        raise _bad(f"finish_reason {finish_reason}", status, truncated=finish_reason == "length")
    if content is not None and not isinstance(content, str):
        raise _bad("content is not text", status)
    if not content or not content.strip():
        refused = isinstance(message, dict) and message.get("refusal")
        raise _bad("refusal without content" if refused else "empty content", status)
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = _int_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Completion(
        text=content,
        finish_reason=str(finish_reason or "stop"),
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
        cached_tokens=cached or 0,
    )
