"""Consumer processes and output readers shared by the Kafka end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from core.keys import list_outputs, superseded
from core.storage import resolve
from devtools.tansu import KafkaTopic, wait_for
from tests.support.documents import CONSUME, REPO, page

SESSION_TIMEOUT_MS = 3000
"""Short, so a restarted consumer does not wait long for the group to drop the member that was killed."""


def documents(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """(key, value) messages of `n` good documents, keyed by id as the producer does."""
    return [
        (f"doc-{i}".encode(), json.dumps({"id": f"doc-{i}", "text": page(i), "url": f"https://t.test/{i}"}).encode())
        for i in range(start, start + n)
    ]


@dataclass
class Output:
    """What a run wrote, read back through pyarrow's filesystem (local or S3) as readers take it: files that
    their writer published after losing the partition (`core.keys.superseded`) are left out, and listed."""

    rows: list[dict]
    rejected: list[dict]
    superseded: list[str] = field(default_factory=list)

    @property
    def doc_ids(self) -> Counter[str]:
        """How many outcomes each document id has (rows and rejections together)."""
        return Counter([r["doc_id"] for r in self.rows] + [r["doc_id"] for r in self.rejected if r["doc_id"]])

    @property
    def sources(self) -> Counter[tuple[int, int]]:
        """How many outcomes each (partition, offset) has."""
        return Counter((r["source_partition"], r["source_offset"]) for r in self.rows + self.rejected)


def read_output(uri: str, topic: str, s3_endpoint_url: str | None = None) -> Output:
    location = resolve(uri, s3_endpoint_url=s3_endpoint_url)
    files = list_outputs(location, topic)
    fenced = {f.path for f in superseded(files)}

    def read(rejected: bool) -> list[dict]:
        paths = sorted(f.path for f in files if f.rejected == rejected and f.path not in fenced)
        return [r for path in paths for r in pq.read_table(path, filesystem=location.fs).to_pylist()]

    return Output(read(False), read(True), sorted(fenced))


class Consumer:
    """`python -m streamer.consume --bootstrap-servers ...` as a subprocess, its JSON log in a file."""

    def __init__(
        self,
        topic: KafkaTopic,
        output: str,
        llm_url: str,
        log_dir: Path,
        *extra: str,
        s3_endpoint_url: str | None = None,
        name: str = "consumer",
    ) -> None:
        self.topic = topic
        self.cmd = [
            *CONSUME,
            "--bootstrap-servers",
            topic.bootstrap,
            "--topic",
            topic.name,
            "--group-id",
            topic.group_id,
            "--output",
            output,
            "--base-url",
            llm_url,
            "--api-key",
            "sk-test",
            "--model",
            "gpt-4o-mini",
            "--seed",
            "7",
            "--max-concurrency",
            "16",
            "--max-in-flight-docs",
            "16",
            "--session-timeout-ms",
            str(SESSION_TIMEOUT_MS),
            "--roll-records",
            "5",
            "--log-format",
            "json",
            *extra,
        ]
        if s3_endpoint_url:
            self.cmd += ["--s3-endpoint-url", s3_endpoint_url]
        self.log_dir = log_dir
        self.name = name
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / f"{name}-0.log"

    def start(self) -> Consumer:
        self.log_path = self.log_dir / f"{self.name}-{self.runs}.log"
        self.runs += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict]:
        """The JSON log lines of the current run (anything else is a bug in the logging set-up)."""
        return [json.loads(line) for line in self.log().splitlines() if line.strip()]

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the group gave it partitions and they are prepared."""
        wait_for(lambda: "partitions ready" in self.log() or self.exited, timeout, f"{self.name} to get partitions")

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.name} did not exit in {timeout}s; log tail:\n{self.log()[-3000:]}") from None

    def stop(self) -> None:
        """Test teardown: make sure nothing outlives the test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_committed(topic: KafkaTopic, at_least: int, timeout: float = 60) -> dict[int, int | None]:
    """Until the group has committed at least `at_least` offsets in total."""

    def enough() -> dict[int, int | None] | None:
        committed = topic.committed()
        return committed if sum(c or 0 for c in committed.values()) >= at_least else None

    return wait_for(enough, timeout, f"{at_least} committed offsets on {topic.name}", interval=0.2)  # type: ignore[return-value]


def sleep_until(deadline: float) -> None:
    """Let a random moment come (the SIGKILL tests kill at random times on purpose, not to synchronise)."""
    time.sleep(max(0.0, deadline - time.monotonic()))
