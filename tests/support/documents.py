"""Test documents, the consume command line and reading a local output back: one copy for every test package."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
CONSUME = (sys.executable, "-m", "streamer.consume")


def marker(i: int) -> str:
    """The unique tag in the first paragraph of `page(i)` (sectioning always keeps the first paragraph)."""
    return f"PAGE-{i:04d}"


def page(i: int, paragraphs: int = 4) -> str:
    """A distinct multi-paragraph page: different enough from its neighbours that dedup keeps them apart."""
    body = "\n".join(
        f"Paragraph {p} of page {i}: the council discussed budget line {p * i + 17} and ferry route {i % 7}."
        for p in range(1, paragraphs + 1)
    )
    return f"{marker(i)} Harbour council meeting report number {i}.\n{body}"


def write_jsonl(path: Path, records: Iterable[object], extra_lines: Iterable[str] = ()) -> Path:
    """One JSON record per line, then any raw (possibly broken) lines."""
    with path.open("w") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path


def run_consume(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m streamer.consume ARGS` from the repository root, as a user runs it."""
    return subprocess.run(
        [*CONSUME, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def consume_file(
    source: Path, output: Path, llm_url: str, *extra: str, api_key: str = "sk-test", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A file run of `python -m streamer.consume` with gpt-4o-mini at the OpenAI-compatible server `llm_url`."""
    common = ["--source", str(source), "--output", str(output), "--base-url", llm_url, "--api-key", api_key]
    return run_consume(*common, "--model", "gpt-4o-mini", *extra, env=env)


def read_outcomes(output: Path) -> tuple[list[dict], list[dict]]:
    """(rows, rejections) of every Parquet file under a local output root."""
    rows: list[dict] = []
    rejected: list[dict] = []
    for f in sorted(output.rglob("*.parquet")):
        (rejected if "_rejected" in f.relative_to(output).parts else rows).extend(pq.read_table(f).to_pylist())
    return rows, rejected
