"""Fixtures of the trainer's tests: one tiny chat model per session, datasets in the streamer's exact schema.

Rows are built from `PAIRS_SCHEMA` itself (every column, nullable ones left empty) rather than from a hand-copied
column list, so these tests keep writing what `streamer.consume` writes when the schema grows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.markers import advance_marker
from core.schema import PAIRS_SCHEMA
from core.storage import resolve
from tests.support.tiny_model import build_tiny_chat_model

REPO = Path(__file__).resolve().parents[2]
# Tiny and fast: 2 optimizer steps of 2 sequences of at most 128 tokens, no gradient accumulation.
TINY = [
    "--max-steps",
    "2",
    "--max-length",
    "128",
    "--per-device-train-batch-size",
    "2",
    "--effective-batch-size",
    "0",
    "--logging-steps",
    "1",
    "--learning-rate",
    "1e-4",
    "--dataloader-pin-memory",
    "false",
]


def rows_used(meta: dict[str, Any]) -> int:
    """Rows a run trained on plus the rows it held out for the evaluation gate: every valid row of its snapshot."""
    return int(meta["rows"]["trained"]) + int(meta["rows"]["heldout"])


def chat(i: int) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"Explain garden number {i} to a new reader."},
        {"role": "assistant", "content": f"Garden {i} is green, and the river beside it is long and cold."},
    ]


def pairs_table(messages: Sequence[object], start: int = 0) -> pa.Table:
    """A table of exactly PAIRS_SCHEMA with the given `messages` values (any shape, for malformed-row tests)."""
    n = len(messages)
    columns: dict[str, list[Any]] = {}
    for f in PAIRS_SCHEMA:
        if f.name == "messages":
            columns[f.name] = list(messages)
        elif f.name in ("doc_id", "prompt_id"):
            columns[f.name] = [f"{f.name}-{start + i}" for i in range(n)]
        elif f.nullable:
            columns[f.name] = [None] * n
        elif pa.types.is_timestamp(f.type):
            columns[f.name] = [datetime(2026, 1, 1, tzinfo=UTC)] * n
        elif pa.types.is_string(f.type):
            columns[f.name] = ["test"] * n
        else:
            columns[f.name] = [0] * n
    return pa.table(columns, schema=PAIRS_SCHEMA)


def write_rows(
    root: Path, start: int, messages: Sequence[object], *, subdir: str = "webr/0", commit: bool = True
) -> Path:
    """Rows of offsets `start`.. in one file named like the sink names its files (start offset, zero padded),
    with the sink's offset-range metadata; `commit` moves the commit marker of stream `webr` partition 0 past
    it, as a consumer does once its offsets are committed (without it, no snapshot takes the file)."""
    path = root / subdir / f"webr+0+{start:020d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pairs_table(messages, start)
    offsets = {"webr.start_offset": str(start), "webr.end_offset": str(start + len(messages))}
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **offsets}), path)
    if commit:
        advance_marker(resolve(str(root)), "webr", 0, start + len(messages))
    return path


def write_pairs(root: Path, start: int, count: int, *, subdir: str = "webr/0", commit: bool = True) -> Path:
    """`count` valid pairs written by `write_rows`."""
    return write_rows(root, start, [chat(i) for i in range(start, start + count)], subdir=subdir, commit=commit)


@dataclass(frozen=True)
class Dirs:
    """A dataset root, a publish root and a work dir for one test, plus the args that name them."""

    data: Path
    out: Path
    work: Path
    model: Path

    def args(self, *extra: str) -> list[str]:
        return [
            "--data",
            str(self.data),
            "--base-model",
            str(self.model),
            "--output-dir",
            str(self.out),
            "--work-dir",
            str(self.work),
            *TINY,
            *extra,
        ]

    def latest(self) -> str | None:
        pointer = self.out / "latest"
        return pointer.read_text().strip() if pointer.exists() else None

    def runs(self) -> list[str]:
        return sorted(p.name for p in self.out.iterdir() if p.is_dir()) if self.out.exists() else []


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat-model"))


@pytest.fixture
def dirs(tmp_path: Path, tiny_model: Path) -> Dirs:
    return Dirs(tmp_path / "data", tmp_path / "models", tmp_path / "work", tiny_model)


@pytest.fixture
def run_inprocess(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str]]:
    """`python -m trainer.run` in this process (imports paid once): (exit code, summary line)."""
    from trainer.run import main

    def run(args: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        code = main(args)
        lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("trainer: ")]
        assert len(lines) == 1, f"expected one summary line, got {lines}"
        return code, lines[0]

    return run


def trainer_process(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """The real CLI in a child process (for SIGKILL and concurrency); stderr goes to `log_path`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.run", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log_path.open("wb"),
    )
