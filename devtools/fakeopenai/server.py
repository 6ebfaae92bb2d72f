"""An OpenAI-compatible chat server on aiohttp for tests and benchmarks, with faults and rate limits on demand.

It runs on its own event loop in a background thread, so synchronous and asynchronous tests (and a benchmark
driving a subprocess) can all use it; `python -m devtools.fakeopenai` runs it standalone. Every request is recorded
with the reply it got, so a test can tell which call produced what.

Order of decisions for one POST /v1/chat/completions:
1. malformed body -> 400; wrong key (when `api_key` is configured) -> 401;
2. the candidate reply: the responder's text, or the default reply (unique per request);
3. rate limits (see limits.py for what is charged) -> 429 with retry-after and x-ratelimit-* headers;
4. a scripted fault (`inject`), else a Fault returned by the responder, else a random fault (`fault_rates`);
5. simulated latency (fixed plus per output token), served in one of `capacity` slots when the server has a bounded
   batch like vLLM's (the rest wait in arrival order), then the answer.

`GET /metrics` exposes vLLM's scheduler gauges (`vllm:num_requests_running`, `vllm:num_requests_waiting`,
`vllm:kv_cache_usage_perc`) so clients that size their concurrency from them can be tested without a GPU.
"""

from __future__ import annotations

import asyncio
import copy
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from consumers.llm.tokens import count_tokens, messages_tokens, truncate_to_tokens
from devtools.fakeopenai.faults import REFUSAL_TEXT, Fault, FaultKind
from devtools.fakeopenai.limits import WindowLimiter, estimate_prompt_tokens, go_duration
from devtools.fakeopenai.replies import PrefixCache, default_reply

Messages = list[dict[str, str]]
Responder = Callable[[Messages], "str | Fault | None"]


@dataclass
class ServerConfig:
    """Behaviour of the fake server; change it while running with `FakeOpenAI.configure()`."""

    model: str = "gpt-4o-mini"
    rpm: int | None = None
    tpm: int | None = None
    window_s: float = 1.0
    latency_s: float | tuple[float, float] = 0.0  # fixed, or a uniform random range
    latency_per_token_s: float = 0.0  # added per completion token, like a decoder's step time
    capacity: int | None = None  # requests served at once (a vLLM batch); None: unbounded
    reply_words: tuple[int, int] = (40, 200)
    seed: int = 0
    fault_rates: dict[FaultKind, float] = field(default_factory=dict)  # probability per accepted request
    api_key: str | None = None  # when set, other keys get 401
    simulate_cache: bool = True
    expose_metrics: bool = True  # False: GET /metrics is 404, as on servers other than vLLM


@dataclass(frozen=True)
class Record:
    """One request as the server saw it and what it answered."""

    index: int
    t: float  # seconds since the server started
    messages: Messages
    params: dict[str, Any]
    status: int
    fault: FaultKind | None
    reply: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    charged_tokens: int  # what the rate limiter charged; 0 when it refused the request
    cached_tokens: int  # simulated prompt-cache hit reported in usage


@dataclass
class SecondStats:
    requests: int = 0
    accepted: int = 0
    rate_limited: int = 0
    charged_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ServerStats:
    """Totals and a per-second timeline (second = whole seconds since start), for benchmarks."""

    requests: int = 0
    rate_limited: int = 0  # every 429, scripted or from the limiter
    faults: Counter[str] = field(default_factory=Counter)
    timeline: dict[int, SecondStats] = field(default_factory=dict)
    service: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each request in a slot

    def busy_slots(self, start: float, end: float) -> float:
        """Mean number of requests in service between `start` and `end` (seconds since the server started)."""
        if end <= start:
            return 0.0
        busy = sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.service)
        return busy / (end - start)


@dataclass
class _Outcome:
    status: int
    fault: FaultKind | None = None
    text: str | None = None
    finish: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    hang_s: float = 0.0


def _error(status: int, kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeOpenAI:
    """Start with `start()` (or `with FakeOpenAI() as server:`); `url` is the base URL ending in /v1."""

    def __init__(
        self, config: ServerConfig | None = None, *, host: str = "127.0.0.1", port: int = 0, **changes: Any
    ) -> None:
        self.config = config or ServerConfig()
        self.host = host
        self.port = port
        self.responder: Responder | None = None
        self._lock = threading.Lock()
        self._script: deque[Fault] = deque()
        self._records: list[Record] = []
        self._stats = ServerStats()
        self._counter = 0
        self._rng = random.Random(self.config.seed)
        self._cache = PrefixCache()
        self._limiter = WindowLimiter(None, None)
        self._t0 = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._running = 0
        self._waiting = 0
        self._slot_freed: asyncio.Condition | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self.configure(**changes)

    # -- control from tests ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def configure(self, **changes: Any) -> None:
        """Change settings (names of ServerConfig); limits restart with a fresh window."""
        names = {f.name for f in fields(ServerConfig)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown server settings: {sorted(unknown)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self.config, name, value)
            if "seed" in changes:
                self._rng = random.Random(self.config.seed)
            self._limiter = WindowLimiter(self.config.rpm, self.config.tpm, self.config.window_s)

    def inject(self, fault: Fault, times: int = 1) -> None:
        """The next `times` requests that pass the rate limiter get `fault`."""
        with self._lock:
            self._script.extend([fault] * times)

    @property
    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def stats(self) -> ServerStats:
        with self._lock:
            return copy.deepcopy(self._stats)

    def now(self) -> float:
        """The server's clock, as `Record.t` reads it: seconds since the server started."""
        return time.monotonic() - self._t0

    def reset(self) -> None:
        """Forget records, stats and scripted faults (the configuration stays)."""
        with self._lock:
            self._records.clear()
            self._stats = ServerStats()
            self._script.clear()

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fakeopenai", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(timeout=30)
        return self

    async def _astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        self._slot_freed = asyncio.Condition()
        # A short shutdown timeout: requests hanging on purpose must not hold up the end of a test.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._t0 = time.monotonic()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP handlers ------------------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "fakeopenai"}
        return web.json_response({"object": "list", "data": [model]})

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.config.expose_metrics:
            raise web.HTTPNotFound()
        return web.Response(body=generate_latest(self._registry), content_type="text/plain")

    def collect(self) -> Any:
        """vLLM's scheduler gauges and prefix-cache counters, under vLLM's names (a prometheus_client collector)."""
        labels = ["model_name"]
        model = [self.config.model]
        for name, help_text, value in (
            ("vllm:num_requests_running", "Requests in the batch", self._running),
            ("vllm:num_requests_waiting", "Requests waiting for a slot", self._waiting),
            ("vllm:kv_cache_usage_perc", "Share of the batch in use (1 = full)", self._usage()),
        ):
            gauge = GaugeMetricFamily(name, help_text, labels=labels)
            gauge.add_metric(model, value)
            yield gauge
        with self._lock:
            queries = sum(r.prompt_tokens for r in self._records if r.reply is not None)
            hits = sum(r.cached_tokens for r in self._records)
        for name, help_text, value in (
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache", queries),
            ("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache", hits),
        ):
            counter = CounterMetricFamily(name, help_text, labels=labels)
            counter.add_metric(model, value)
            yield counter

    def _usage(self) -> float:
        capacity = self.config.capacity
        return min(1.0, self._running / capacity) if capacity else 0.0

    async def _serve(self, seconds: float) -> None:
        """Hold one of `capacity` slots for `seconds`; waiters are served in arrival order."""
        assert self._slot_freed is not None
        capacity = self.config.capacity
        self._waiting += 1
        try:
            async with self._slot_freed:
                await self._slot_freed.wait_for(lambda: capacity is None or self._running < capacity)
                self._running += 1
        finally:
            self._waiting -= 1
        start = time.monotonic()
        try:
            await asyncio.sleep(seconds)
        finally:
            end = time.monotonic()
            with self._lock:
                self._stats.service.append((start - self._t0, end - self._t0))
            async with self._slot_freed:
                self._running -= 1
                self._slot_freed.notify()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        elapsed = time.monotonic() - self._t0
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(_error(400, "invalid_request_error", "body is not JSON"), status=400)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return web.json_response(_error(400, "invalid_request_error", "'messages' is required"), status=400)
        key = self.config.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            payload = _error(401, "invalid_request_error", "incorrect API key", "invalid_api_key")
            return web.json_response(payload, status=401)
        outcome, record = self._decide(body, messages, elapsed)
        if outcome.status != 429 or outcome.fault is not None:
            await self._serve(self._latency() + self.config.latency_per_token_s * record.completion_tokens)
        if outcome.hang_s:
            await asyncio.sleep(outcome.hang_s)
        return self._respond(outcome, record)

    def _latency(self) -> float:
        latency = self.config.latency_s
        if isinstance(latency, tuple):
            with self._lock:
                return self._rng.uniform(*latency)
        return latency

    def _decide(self, body: dict[str, Any], messages: Messages, elapsed: float) -> tuple[_Outcome, Record]:
        """Everything that needs the lock, done at once so concurrent requests see a consistent state."""
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        candidate = self.responder(messages) if self.responder is not None else None
        prompt_tokens = messages_tokens(messages)
        with self._lock:
            index = self._counter
            self._counter += 1
            text = candidate if isinstance(candidate, str) else None
            if text is None:
                text = default_reply(messages, index, self.config.reply_words, self.config.seed)
            completion = count_tokens(text) if not isinstance(candidate, Fault) else 0
            charged = estimate_prompt_tokens(messages) + (max_tokens or completion)
            decision = self._limiter.check(elapsed, charged) if self._limiter.enabled else None
            headers = decision.headers if decision else {}
            if decision is not None and not decision.allowed:
                outcome = _Outcome(429, None, headers=headers)
                charged = 0
            else:
                fault = self._pick_fault(candidate)
                outcome = self._build(fault, text, max_tokens, headers)
            cached = 0
            if outcome.text is not None and self.config.simulate_cache:
                cached = self._cache.cached_tokens(messages, prompt_tokens)
            record = Record(
                index=index,
                t=elapsed,
                messages=messages,
                params={k: body.get(k) for k in ("model", "temperature", "top_p", "max_tokens", "seed") if k in body},
                status=outcome.status,
                fault=outcome.fault,
                reply=outcome.text,
                finish_reason=outcome.finish,
                prompt_tokens=prompt_tokens,
                completion_tokens=count_tokens(outcome.text) if outcome.text else 0,
                charged_tokens=charged,
                cached_tokens=cached,
            )
            self._account(record)
        return outcome, record

    def _pick_fault(self, candidate: str | Fault | None) -> Fault | None:
        if self._script:
            return self._script.popleft()
        if isinstance(candidate, Fault):
            return candidate
        draw = self._rng.random()
        for kind, probability in sorted(self.config.fault_rates.items()):
            if draw < probability:
                return Fault.of(kind)
            draw -= probability
        return None

    def _build(self, fault: Fault | None, text: str, max_tokens: int | None, headers: dict[str, str]) -> _Outcome:
        if fault is None:
            if max_tokens and count_tokens(text) > max_tokens:
                return _Outcome(200, None, truncate_to_tokens(text, max_tokens)[0], "length", headers)
            return _Outcome(200, None, text, "stop", headers)
        kind = fault.kind
        if kind is FaultKind.RATE_LIMIT:
            wait = fault.retry_after_s
            limited = {"retry-after": f"{wait:g}", "x-ratelimit-remaining-requests": "0"}
            limited["x-ratelimit-reset-requests"] = go_duration(wait)
            return _Outcome(429, kind, headers={**headers, **limited})
        if kind in (FaultKind.SERVER_ERROR, FaultKind.BAD_REQUEST):
            return _Outcome(fault.status, kind, headers=headers)
        if kind is FaultKind.TIMEOUT:
            return _Outcome(200, kind, text, "stop", headers, hang_s=fault.hang_s)
        if kind is FaultKind.REFUSAL:
            return _Outcome(200, kind, REFUSAL_TEXT, "stop", headers)
        if kind is FaultKind.EMPTY:
            return _Outcome(200, kind, "", "stop", headers)
        if kind is FaultKind.GARBAGE:
            return _Outcome(200, kind, headers=headers, body=b"<html>502 upstream said {not json")
        if kind is FaultKind.LENGTH:
            return _Outcome(200, kind, text[: max(1, len(text) // 2)], "length", headers)
        return _Outcome(200, kind, None, "content_filter", headers)

    def _account(self, record: Record) -> None:
        self._records.append(record)
        stats = self._stats
        stats.requests += 1
        second = stats.timeline.setdefault(int(record.t), SecondStats())
        second.requests += 1
        if record.status == 429:
            stats.rate_limited += 1
            second.rate_limited += 1
        if record.fault is not None:
            stats.faults[record.fault.value] += 1
        if record.charged_tokens:
            second.accepted += 1
            second.charged_tokens += record.charged_tokens
            second.prompt_tokens += record.prompt_tokens
            second.completion_tokens += record.completion_tokens

    def _respond(self, outcome: _Outcome, record: Record) -> web.Response:
        headers = outcome.headers
        if outcome.status == 429:
            message = "Rate limit reached (fake server)."
            payload = _error(429, "requests", message, "rate_limit_exceeded")
            return web.json_response(payload, status=429, headers=headers)
        if outcome.status >= 400:
            kind = "server_error" if outcome.status >= 500 else "invalid_request_error"
            payload = _error(outcome.status, kind, "injected fault")
            return web.json_response(payload, status=outcome.status, headers=headers)
        if outcome.body is not None:
            return web.Response(body=outcome.body, status=200, headers=headers, content_type="application/json")
        usage = {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "total_tokens": record.prompt_tokens + record.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": record.cached_tokens},
        }
        message = {"role": "assistant", "content": outcome.text, "refusal": None}
        payload = {
            "id": f"chatcmpl-fake-{record.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": outcome.finish}],
            "usage": usage,
            "system_fingerprint": "fakeopenai",
        }
        return web.json_response(payload, headers=headers)
