"""HTTP ingest: crawlers POST documents, the service puts them on the Kafka topic.

    WEBR_INGEST_TOKENS=secret1,secret2 python -m producers.http_ingest --bootstrap-servers HOST:PORT --topic T

`POST /v1/documents` takes a JSON array or JSONL (records as `producers.files` reads them: `text`/`webpage`, optional
`id`, `url`, metadata) with `Authorization: Bearer <token>`. Each valid record is sent keyed by its `doc_id`; the
answer comes only once Kafka acknowledged them all, so a 200 means durable: `{"ids": [...], "errors": [{"index",
"reason", "detail"}]}`. When more documents are waiting for acknowledgement than `--max-buffered`, the whole request
is refused with 429 and `Retry-After` (nothing of it sent: never a silent drop, never half a batch). A Kafka failure
answers 503 with `Retry-After`; a document larger than the producer's `max_request_size` is not a Kafka failure but
a per-record error (`too_large`), like an invalid record. Resending is safe because ids are stable and consumers
dedup by `doc_id`. `GET /healthz` (503 while shutting down) and `GET /metrics` (Prometheus). SIGTERM stops
accepting, lets requests in progress get their acknowledgements, flushes the producer and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import ValidationError

from core.exceptions import InvalidRecord, SettingsError
from core.records import Document, parse_record
from producers.files import create_topic, make_producer
from producers.settings import HttpIngestSettings

RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class IngestSettings:
    topic: str
    tokens: frozenset[str]
    max_body_bytes: int = 32 << 20
    max_records: int = 10_000
    max_buffered: int = 20_000
    delivery_timeout_s: float = 120.0


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("webr_ingest_requests_total", "Requests by HTTP status", ["status"], registry=r)
        self.accepted = Counter("webr_ingest_documents_total", "Documents acknowledged by Kafka", registry=r)
        self.invalid = Counter("webr_ingest_invalid_total", "Invalid records by reason", ["reason"], registry=r)
        self.buffered = Gauge("webr_ingest_buffered", "Documents sent, not yet acknowledged", registry=r)


class Ingest:
    """The service's state: one producer, the count of unacknowledged documents, the shutdown flag."""

    def __init__(self, settings: IngestSettings, producer: KafkaProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = IngestMetrics()
        self.buffered = 0
        self.stopping = False

    def authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return any(hmac.compare_digest(token.encode(), known.encode()) for known in self.settings.tokens)

    async def documents(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return self._answer(401, {"error": "missing or unknown bearer token"}, {"WWW-Authenticate": "Bearer"})
        if self.stopping:
            return self._answer(503, {"error": "shutting down"}, {"Retry-After": str(RETRY_AFTER_S)})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._answer(413, {"error": f"body larger than {self.settings.max_body_bytes} bytes"})
        try:
            records = parse_body(body)
        except ValueError as exc:
            return self._answer(400, {"error": str(exc)})
        if len(records) > self.settings.max_records:
            return self._answer(413, {"error": f"more than {self.settings.max_records} records"})
        docs, errors = validate(records)
        for error in errors:
            self.metrics.invalid.labels(error["reason"]).inc()
        if self.buffered + len(docs) > self.settings.max_buffered:
            detail = f"{self.buffered} documents awaiting Kafka; retry after {RETRY_AFTER_S}s"
            return self._answer(429, {"error": detail}, {"Retry-After": str(RETRY_AFTER_S)})
        try:
            too_large = await self._send(docs)
        except Exception as exc:
            return self._answer(503, {"error": f"kafka: {exc}"}, {"Retry-After": str(RETRY_AFTER_S)})
        for error in too_large:
            self.metrics.invalid.labels(error["reason"]).inc()
        rejected = {error["index"] for error in too_large}
        ids = [doc.doc_id for index, doc in docs if index not in rejected]
        self.metrics.accepted.inc(len(ids))
        errors = sorted([*errors, *too_large], key=lambda error: int(error["index"]))
        return self._answer(200, {"ids": ids, "errors": errors})

    async def _send(self, docs: list[tuple[int, Document]]) -> list[dict[str, Any]]:
        """Send and wait for every acknowledgement; the buffered count covers exactly the wait.

        A document the producer refuses as too large is answered as an error of its own (returned), so that the
        rest of its batch is acknowledged: as a Kafka failure it would make every retry of the request fail again
        and send the rest again. Any other error is transient and raised (the request answers 503)."""
        loop = asyncio.get_running_loop()
        self.buffered += len(docs)
        self.metrics.buffered.set(self.buffered)
        try:
            waiters: list[asyncio.Future[Any]] = []
            too_large: list[dict[str, Any]] = []
            for index, doc in docs:
                try:
                    waiters.append(self._acked(loop, doc))
                except MessageSizeTooLargeError as exc:
                    too_large.append({"index": index, "reason": "too_large", "detail": str(exc)})
            await asyncio.wait_for(asyncio.gather(*waiters), self.settings.delivery_timeout_s)
            return too_large
        finally:
            self.buffered -= len(docs)
            self.metrics.buffered.set(self.buffered)

    def _acked(self, loop: asyncio.AbstractEventLoop, doc: Document) -> asyncio.Future[Any]:
        waiter: asyncio.Future[Any] = loop.create_future()

        def done(result: Any) -> None:
            if not waiter.done():
                waiter.set_result(result)

        def failed(exc: BaseException) -> None:
            if not waiter.done():
                waiter.set_exception(exc)

        future = self.producer.send(self.settings.topic, key=doc.doc_id.encode(), value=doc.to_json())
        future.add_callback(lambda result: loop.call_soon_threadsafe(done, result))
        future.add_errback(lambda exc: loop.call_soon_threadsafe(failed, exc))
        return waiter

    async def healthz(self, _request: web.Request) -> web.Response:
        if self.stopping:
            return web.json_response({"status": "stopping"}, status=503)
        return web.json_response({"status": "ok", "buffered": self.buffered})

    async def metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
        self.metrics.requests.labels(str(status)).inc()
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def parse_body(body: bytes) -> list[Any]:
    """A JSON array, or JSONL (one object per line); a line that is not JSON is kept as an invalid record."""
    stripped = body.lstrip()
    if not stripped:
        raise ValueError("empty body")
    if stripped[:1] == b"[":
        try:
            records = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not a JSON array: {exc}") from exc
        return list(records)
    out: list[Any] = []
    for line in body.splitlines():
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                out.append(InvalidRecord("not_json", str(exc)))
    return out


def validate(records: list[Any]) -> tuple[list[tuple[int, Document]], list[dict[str, Any]]]:
    """Valid documents with their 0-based index in the body, and one error per invalid record with its index."""
    docs: list[tuple[int, Document]] = []
    errors: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        try:
            if isinstance(record, InvalidRecord):
                raise record
            docs.append((index, parse_record(record)))
        except InvalidRecord as exc:
            errors.append({"index": index, "reason": exc.reason, "detail": exc.detail})
    return docs, errors


def make_app(ingest: Ingest) -> web.Application:
    app = web.Application(client_max_size=ingest.settings.max_body_bytes)
    app.router.add_post("/v1/documents", ingest.documents)
    app.router.add_get("/healthz", ingest.healthz)
    app.router.add_get("/metrics", ingest.metrics_page)

    async def on_shutdown(_app: web.Application) -> None:
        ingest.stopping = True

    async def on_cleanup(_app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, ingest.producer.flush)
        ingest.producer.close()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producers.http_ingest", description=__doc__.split("\n\n")[0])
    HttpIngestSettings.add_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cli = HttpIngestSettings.from_args(make_parser().parse_args(argv))
    except (ValidationError, SettingsError) as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    create_topic(cli.kafka)
    tokens = frozenset(t.get_secret_value() for t in cli.ingest_tokens if t.get_secret_value())
    settings = IngestSettings(cli.kafka.topic, tokens, cli.max_body_bytes, cli.max_records, cli.max_buffered)
    ingest = Ingest(settings, make_producer(cli.kafka))
    web.run_app(make_app(ingest), host=cli.host, port=cli.port, shutdown_timeout=cli.shutdown_timeout_s, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
