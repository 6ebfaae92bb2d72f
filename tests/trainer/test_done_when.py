"""The consume-then-retrain cycle from cron, end to end: `streamer.consume` writes a dataset (against the in-repo
OpenAI-compatible server), `trainer.run` publishes a model; a second run with no new data publishes none and
exits 0; after `streamer.consume` adds rows to the same output, a third run publishes a new model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.fakeopenai import FakeOpenAI
from tests.support.documents import consume_file, page, write_jsonl

from .conftest import REPO, Dirs, rows_used


def consume(source: Path, output: Path, server: FakeOpenAI) -> None:
    done = consume_file(source, output, server.url, "--seed", "7", "--roll-records", "4")
    assert done.returncode == 0, done.stderr[-3000:]


def pages(path: Path, first: int, count: int) -> Path:
    return write_jsonl(path, ({"id": f"doc-{i}", "webpage": page(i)} for i in range(first, first + count)))


def train(dirs: Dirs) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "-m",
        "trainer.run",
        "--data",
        str(dirs.data),
        "--base-model",
        str(dirs.model),
        "--output-dir",
        str(dirs.out),
        "--work-dir",
        str(dirs.work),
        "--min-new-rows",
        "1",
        "--max-steps",
        "2",
        "--max-length",
        "1024",
        "--per-device-train-batch-size",
        "2",
    ]
    done = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return done.returncode, done.stdout.strip() + "\n" + done.stderr[-3000:]


def trained_rows(dirs: Dirs) -> int:
    meta = json.loads((dirs.out / str(dirs.latest()) / "training_metadata.json").read_text())
    return rows_used(meta)


def test_consume_then_train_skip_consume_more_train_again(dirs: Dirs, fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    consume(pages(tmp_path / "crawl-1.jsonl", 0, 6), dirs.data, fake_llm)
    code, out = train(dirs)
    assert code == 0, out
    first = dirs.latest()
    assert first is not None
    assert (dirs.out / first / "config.json").is_file()
    first_rows = trained_rows(dirs)
    assert first_rows > 0

    code, out = train(dirs)
    assert code == 0, out
    assert "status=nothing_to_do" in out
    assert (dirs.latest(), dirs.runs()) == (first, [first])

    consume(pages(tmp_path / "crawl-2.jsonl", 6, 5), dirs.data, fake_llm)
    code, out = train(dirs)
    assert code == 0, out
    second = dirs.latest()
    assert second not in (None, first)
    assert (dirs.out / second / "config.json").is_file()
    assert trained_rows(dirs) > first_rows
