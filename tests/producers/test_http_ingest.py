"""The HTTP ingest service against the real broker: acknowledged ids, per-record errors, auth, limits, 429."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from kafka import KafkaProducer

from core.records import parse_message, text_doc_id
from devtools.ports import free_port
from devtools.tansu import KafkaTopic, TansuBroker, wait_for
from producers.http_ingest import Ingest, IngestSettings, main, make_app
from tests.support.documents import REPO

TOKEN = "test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.timeout(180)


def _docs(prefix: str, n: int) -> list[dict[str, str]]:
    return [
        {"id": f"{prefix}-{i}", "text": f"Page {i} of batch {prefix}.", "url": f"https://h.test/{i}"} for i in range(n)
    ]


@pytest.fixture
async def make_client(kafka_topic: KafkaTopic) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    """Start the service in-process on a fresh topic, with `IngestSettings` overrides; stopped at teardown."""
    clients: list[TestClient] = []

    async def make(linger_ms: int = 5, max_request_size: int = 1 << 20, **settings: Any) -> TestClient:
        producer = KafkaProducer(
            bootstrap_servers=kafka_topic.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_request_size=max_request_size,
        )
        ingest = Ingest(IngestSettings(kafka_topic.name, frozenset({TOKEN}), **settings), producer)
        client = TestClient(TestServer(make_app(ingest)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_array_and_jsonl_bodies_answer_ids_and_per_record_errors(
    make_client: Callable[..., Awaitable[TestClient]], kafka_topic: KafkaTopic
) -> None:
    client = await make_client()
    try:
        body = [*_docs("a", 3), {"id": "x"}, "not an object", {"text": "no id: hashed"}]
        resp = await client.post("/v1/documents", data=orjson.dumps(body), headers=AUTH)
        assert resp.status == 200
        answer = await resp.json()
        assert answer["ids"] == ["a-0", "a-1", "a-2", text_doc_id("no id: hashed")]
        assert [(e["index"], e["reason"]) for e in answer["errors"]] == [(3, "missing_text"), (4, "not_an_object")]

        jsonl = b"\n".join(orjson.dumps(d) for d in _docs("b", 2)) + b"\n{broken\n"
        resp = await client.post("/v1/documents", data=jsonl, headers=AUTH)
        answer = await resp.json()
        assert (resp.status, answer["ids"], answer["errors"][0]["index"]) == (200, ["b-0", "b-1"], 2)

        keys = {r.key.decode() for r in kafka_topic.read(6)}
        assert keys == {"a-0", "a-1", "a-2", "b-0", "b-1", text_doc_id("no id: hashed")}
        metrics = await (await client.get("/metrics")).text()
        assert "webr_ingest_documents_total 6.0" in metrics
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


async def test_a_document_too_large_for_the_producer_is_rejected_alone(
    make_client: Callable[..., Awaitable[TestClient]], kafka_topic: KafkaTopic
) -> None:
    """A valid record over the producer's `max_request_size`: its own error, the rest of the batch acknowledged once
    (it used to answer 503 forever, the rest sent again on every retry)."""
    client = await make_client(max_request_size=64 << 10)
    try:
        body = [*_docs("e", 2), {"id": "huge", "text": "word " * 20_000}, *_docs("f", 1)]
        resp = await client.post("/v1/documents", data=orjson.dumps(body), headers=AUTH)
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        assert answer["ids"] == ["e-0", "e-1", "f-0"]
        assert [(e["index"], e["reason"]) for e in answer["errors"]] == [(2, "too_large")]
        keys = sorted(r.key.decode() for r in kafka_topic.read(4, timeout=5))
        assert keys == ["e-0", "e-1", "f-0"]
        metrics = await (await client.get("/metrics")).text()
        assert 'webr_ingest_invalid_total{reason="too_large"} 1.0' in metrics
        assert "webr_ingest_documents_total 3.0" in metrics
    finally:
        await client.close()


async def test_bad_tokens_and_oversized_bodies_are_refused(make_client: Callable[..., Awaitable[TestClient]]) -> None:
    client = await make_client(max_body_bytes=2000, max_records=5)
    try:
        body = orjson.dumps(_docs("c", 1))
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            resp = await client.post("/v1/documents", data=body, headers=headers)
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        big = orjson.dumps([{"text": "x" * 3000}])
        assert (await client.post("/v1/documents", data=big, headers=AUTH)).status == 413
        many = orjson.dumps(_docs("d", 6))
        assert (await client.post("/v1/documents", data=many, headers=AUTH)).status == 413
        assert (await client.post("/v1/documents", data=b"[{", headers=AUTH)).status == 400
    finally:
        await client.close()


async def test_concurrent_posts_past_the_buffer_get_429_and_nothing_is_lost_or_doubled(
    make_client: Callable[..., Awaitable[TestClient]], kafka_topic: KafkaTopic
) -> None:
    """Twenty concurrent posts of 5 documents against a buffer of 12: refused ones are retried until accepted."""
    client = await make_client(max_buffered=12, linger_ms=300)
    try:
        batches = {f"p{i}": _docs(f"p{i}", 5) for i in range(20)}

        async def post(name: str) -> tuple[str, int, str | None]:
            resp = await client.post("/v1/documents", data=orjson.dumps(batches[name]), headers=AUTH)
            return name, resp.status, resp.headers.get("Retry-After")

        results = await asyncio.gather(*(post(name) for name in batches))
        refused = [name for name, status, _ in results if status == 429]
        assert refused, "the buffer limit never pushed back"
        assert all(retry == "1" for _, status, retry in results if status == 429)
        assert {status for _, status, _ in results} <= {200, 429}
        while refused:
            await asyncio.sleep(0.3)
            results = await asyncio.gather(*(post(name) for name in refused))
            refused = [name for name, status, _ in results if status == 429]

        keys = [r.key.decode() for r in kafka_topic.read(100, timeout=30)]
        assert sorted(keys) == sorted(d["id"] for batch in batches.values() for d in batch)
    finally:
        await client.close()


def test_sigterm_flushes_what_was_accepted(kafka_broker: TansuBroker) -> None:
    """The service as a process: requests in progress at SIGTERM are answered, and all they accepted is in Kafka."""
    suffix = uuid.uuid4().hex[:8]
    topic = KafkaTopic(f"ingest-{suffix}", f"g-{suffix}", 3, kafka_broker)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "producers.http_ingest",
            "--bootstrap-servers",
            topic.bootstrap,
            "--topic",
            topic.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--linger-ms",
            "500",
        ],
        cwd=REPO,
        env={**os.environ, "WEBR_INGEST_TOKENS": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"

    async def scenario() -> list[list[str]]:
        async with ClientSession() as session:

            async def healthy() -> bool:
                try:
                    async with session.get(f"{url}/healthz") as resp:
                        return resp.status == 200
                except OSError:
                    return False

            for _ in range(150):
                if await healthy():
                    break
                await asyncio.sleep(0.1)

            async def post(i: int) -> list[str]:
                async with session.post(
                    f"{url}/v1/documents", data=orjson.dumps(_docs(f"s{i}", 4)), headers=AUTH
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    return (await resp.json())["ids"]  # type: ignore[no-any-return]

            tasks = [asyncio.create_task(post(i)) for i in range(5)]
            await asyncio.sleep(0.2)  # the posts are waiting on linger_ms when the signal arrives
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    try:
        accepted = asyncio.run(scenario())
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    ids = sorted(i for batch in accepted for i in batch)
    assert len(ids) == 20
    wait_for(lambda: len(topic.read(20, timeout=5)) >= 20, 30, "accepted documents in the topic")
    assert sorted(parse_message(r.value).doc_id for r in topic.read(20)) == ids


def test_a_config_file_that_is_not_toml_is_refused_as_invalid_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "ingest.toml"
    config.write_bytes(b"port = 80\x00\n")
    assert main(["--config", str(config)]) == 2
    assert f"invalid settings: cannot read config file {config}" in capsys.readouterr().err
