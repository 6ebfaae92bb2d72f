"""The real model end to end: SmolLM2-135M-Instruct (devtools/smollm2.py) served by vLLM on CPU.

Pages go through the producer CLI into Kafka, the consumer CLI turns them into pairs with vLLM, and the trainer
fine-tunes SmolLM2 on its Parquet; a published fine-tune is then served by vLLM and answers a chat request.
Runs in CI; never skipped. A 135M model completes WebR's three or four calls cleanly on about one page in five
(docs/vllm.md); every call is sampled with a seed of its run, document and step, so the demo's first pages give
pairs on every run with the demo's settings, and the test holds the whole pipeline to producing and publishing
them. Every page is one pair or one rejection with a reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from openai import OpenAI

from demo.run import MAX_PAGE_TOKENS, MAX_TOKENS, SEED
from devtools.tansu import KafkaTopic
from tests.fixtures.vllm_server import VLLMServer, smollm2_spec, start_vllm_server, stop_server
from tests.support.documents import REPO, read_outcomes, run_consume
from tests.trainer.conftest import write_pairs
from trainer.exceptions import EXIT_OK

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PAGES = REPO / "demo" / "pages.jsonl"
DOCS = 3
CONSUME_TIMEOUT_S = 480
# Small and quick on two cores: one sequence of at most 512 tokens, two optimizer steps.
TRAIN = [
    "--max-steps", "2", "--max-length", "512", "--per-device-train-batch-size", "1", "--effective-batch-size", "0",
    "--learning-rate", "1e-5", "--logging-steps", "1", "--dataloader-pin-memory", "false",
]  # fmt: skip


def _trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer.run", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
        check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _summary(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("trainer: ")]
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]
    return lines[0]


def test_real_model_from_kafka_to_parquet_to_the_trainer(
    smollm2_server: VLLMServer, make_topic: Callable[..., KafkaTopic], tmp_path: Path
) -> None:
    topic = make_topic(1)
    pages = tmp_path / "pages.jsonl"
    pages.write_text("\n".join(PAGES.read_text(encoding="utf-8").splitlines()[:DOCS]) + "\n", encoding="utf-8")
    ids = [json.loads(line)["id"] for line in pages.read_text().splitlines()]
    produced = subprocess.run(
        [sys.executable, "-m", "producers.files", "--bootstrap-servers", topic.bootstrap, "--topic", topic.name,
         "--no-progress", str(pages)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr

    out = tmp_path / "out"
    consumed = run_consume(
        "--bootstrap-servers", topic.bootstrap, "--topic", topic.name, "--group-id", topic.group_id,
        "--output", str(out), "--base-url", smollm2_server.base_url, "--api-key", "none",
        "--model", smollm2_server.model, "--seed", str(SEED), "--max-concurrency", "6",
        "--max-tokens", str(MAX_TOKENS), "--max-page-tokens", str(MAX_PAGE_TOKENS), "--stop-after-idle", "5",
        timeout=CONSUME_TIMEOUT_S,
    )  # fmt: skip
    report = f"{consumed.stderr[-4000:]}\n--- vLLM ---\n{smollm2_server.log_tail(20)}"
    assert consumed.returncode == 0, report
    rows, rejected = read_outcomes(out)
    assert sorted([r["doc_id"] for r in rows] + [r["doc_id"] for r in rejected]) == sorted(ids), report
    for record in rejected:
        assert record["stage"] and record["reason"], record
    assert rows, report
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"], row
        assert row["model"] == smollm2_server.model
    print(f"\nSmolLM2: {len(rows)} pairs, rejections {sorted(r['reason'] for r in rejected)}")

    models = tmp_path / "models"
    done = _trainer(
        "--data", str(out), "--base-model", str(smollm2_server.model_dir), "--output-dir", str(models),
        "--work-dir", str(tmp_path / "work"), *TRAIN,
    )  # fmt: skip
    line = _summary(done)  # the trainer fine-tunes the real model on the real pairs and publishes (gate included)
    assert done.returncode == EXIT_OK, line + done.stderr[-3000:]
    assert "status=published" in line
    assert (models / "latest").is_file()


def test_a_published_smollm2_fine_tune_loads_in_vllm_and_answers(smollm2_server: VLLMServer, tmp_path: Path) -> None:
    write_pairs(tmp_path / "data", 0, 6)
    models = tmp_path / "models"
    done = _trainer(
        "--data", str(tmp_path / "data"), "--base-model", str(smollm2_server.model_dir), "--output-dir",
        str(models), "--work-dir", str(tmp_path / "work"), *TRAIN,
    )  # fmt: skip
    line = _summary(done)
    assert done.returncode == EXIT_OK, line + done.stderr[-3000:]
    run_id = (models / "latest").read_text().strip()
    meta = json.loads((models / run_id / "training_metadata.json").read_text())
    gate = meta["evaluation"]
    assert gate["promoted"] is True
    assert gate["incumbent"]["model"] == str(smollm2_server.model_dir)
    assert gate["candidate"]["heldout_tokens"] > 0
    print(f"\ngate: candidate {gate['candidate']['heldout_loss']:.4f}, base {gate['incumbent']['heldout_loss']:.4f}")

    server = start_vllm_server(tmp_path / "serve", smollm2_spec(models / run_id, "webr-published"))
    try:
        with OpenAI(base_url=server.base_url, api_key="none", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="webr-published",
                messages=[{"role": "user", "content": "Explain garden number 3 to a new reader."}],
                max_tokens=32,
                temperature=0,
            )
    finally:
        stop_server(server)
    choice = reply.choices[0]
    assert choice.finish_reason in {"stop", "length"}
    assert choice.message.content and choice.message.content.strip()
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    print(f"\npublished {run_id} answered: {choice.message.content!r}")
