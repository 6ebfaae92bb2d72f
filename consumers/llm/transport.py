"""One HTTP exchange with an OpenAI-compatible server: aiohttp for the wire, orjson for the bodies, no SDK.

The client's hot path is a POST of a small JSON body and the read of a small JSON reply; an SDK's request
building, response models and connection-pool bookkeeping cost several milliseconds of CPU per call, more than
the call itself at zero latency. Here one `aiohttp.ClientSession` keeps a sized pool of keep-alive connections,
the body is encoded once with orjson and the reply is returned as bytes: classifying it (`errors.py`) and parsing
it are the caller's business. `post_chat` takes the endpoint as an argument, so a caller may choose a server per
call. Exceptions are aiohttp's and asyncio's own; `errors.classify_exception` sorts them.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

# Keep-alive connections idle longer than this are closed; vLLM and OpenAI keep theirs open longer.
_KEEPALIVE_S = 30.0
_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Reply:
    """What the server answered, whatever the status."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / NO_PROXY name for `url` (None: go direct), as the openai SDK honoured them.

    Read once per session: aiohttp's `trust_env` reads the environment and ~/.netrc again on every request,
    which measured a third of a millisecond per call."""
    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def open_session(
    api_key: str, *, max_connections: int, timeout_s: float, proxy: str | None = None
) -> aiohttp.ClientSession:
    """A session whose pool holds up to `max_connections` keep-alive connections (one per request in flight),
    through `proxy` when given.

    The key travels as a default header of the session; it is never logged (aiohttp logs no headers)."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=_KEEPALIVE_S)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        # vLLM accepts any key; OpenAI-compatible gateways often refuse a request without the header.
        headers={"Authorization": f"Bearer {api_key or 'EMPTY'}"},
        skip_auto_headers=("User-Agent",),
        raise_for_status=False,
        proxy=proxy,
    )


def chat_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


def encode(payload: Mapping[str, Any]) -> bytes:
    return orjson.dumps(payload)


async def post_chat(session: aiohttp.ClientSession, url: str, body: bytes) -> Reply:
    """POST a chat completion request; raises aiohttp/asyncio errors when no complete answer arrives."""
    async with session.post(url, data=body, headers=_JSON_HEADERS) as response:
        return Reply(response.status, response.headers, await response.read())
