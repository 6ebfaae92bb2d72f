"""The whole `python -m streamer.consume` under OpenAI-style limits: capacity used, 429s, calls per document.

    python -m bench.consume_ratelimit --source ../shared/data/web_en_1k.json --docs 60 --runs 3
    python -m bench.consume_ratelimit --consumers 3 --docs 180      # three processes, one organisation's limit

Takes the first `--docs` pages of a file in the reference format, gives them `id`s, starts the fake OpenAI
server with `--rpm`/`--tpm` enforced per second (as OpenAI enforces per-minute limits in slices), and runs
`--consumers` CLI processes at once on equal slices of the pages, each told the whole limit (as users do: nobody
tells a process how many others share the organisation's limit). Throughput is read from the server's own
per-second accounting (what it charged) in steady state. By default no `--backend` is given and the server's
loopback host is not OpenAI's, so the run has vLLM semantics (per-step max_tokens), as for a gateway.
Targets: one consumer >= 95% of the binding limit with <= 1% of requests answered 429; three >= 90% with
<= 2%; every document ends as exactly one row or one rejection, none for a rate limit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from bench.ratelimit import start_server, steady_state

REPO = Path(__file__).resolve().parents[1]


def _write_docs(source: Path, n: int, dest: Path) -> list[str]:
    pages = json.loads(source.read_text())[:n]
    ids = [f"web-{i:04d}" for i in range(len(pages))]
    with dest.open("w") as fh:
        for doc_id, page in zip(ids, pages, strict=True):
            fh.write(json.dumps({"id": doc_id, **page}) + "\n")
    return ids


def _outcomes(out: Path) -> tuple[list[dict], list[dict]]:
    rows, rejected = [], []
    for f in out.rglob("*.parquet"):
        (rejected if "_rejected" in f.parts else rows).extend(pq.read_table(f).to_pylist())
    return rows, rejected


def run_once(args: argparse.Namespace, seed: int) -> dict[str, float]:
    server = start_server(args.rpm, args.tpm, latency_s=(0.1, 0.3), seed=seed)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "docs.jsonl", Path(tmp) / "out"
            ids = _write_docs(args.source, args.docs, src)
            lines = src.read_text().splitlines(keepends=True)
            procs = []
            for i in range(args.consumers):
                part = Path(tmp) / f"part-{i}.jsonl"
                part.write_text("".join(lines[i :: args.consumers]))
                cmd = [
                    sys.executable,
                    "-m",
                    "streamer.consume",
                    "--source",
                    str(part),
                    "--output",
                    str(out),
                    "--base-url",
                    server.url,
                    "--api-key",
                    "sk-bench",
                    "--model",
                    "gpt-4o-mini",
                    "--seed",
                    str(seed),
                    "--max-requests-per-minute",
                    str(args.rpm),
                    "--max-tokens-per-minute",
                    str(args.tpm),
                    "--max-concurrency",
                    str(args.concurrency),
                    "--no-progress",
                    "--log-level",
                    "WARNING",
                    *(["--backend", args.backend] if args.backend else []),
                ]
                procs.append(subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True))
            for proc in procs:
                _, stderr = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"consume failed ({proc.returncode}):\n{stderr[-3000:]}")
            rows, rejected = _outcomes(out)
    finally:
        server.stop()
    ended = [r["doc_id"] for r in rows] + [r["doc_id"] for r in rejected]
    if sorted(ended) != sorted(ids):
        raise SystemExit("not every document ended exactly once")
    rate_limited = [r for r in rejected if r["reason"] == "llm_rate_limited"]
    if rate_limited:
        raise SystemExit(f"{len(rate_limited)} documents rejected for a rate limit")
    stats = server.stats()
    rpm, tpm = steady_state(stats, trim_s=args.trim_s)
    ok = [r for r in server.records if r.status == 200]
    real = sum(r.prompt_tokens + r.completion_tokens for r in ok)
    return {
        "rpm": rpm,
        "tpm": tpm,
        "real_share": real / (args.tpm / 60 * max(r.t for r in ok)) if ok else 0.0,
        "binding_share": max(rpm / args.rpm, tpm / args.tpm),
        "share_429": stats.rate_limited / max(stats.requests, 1),
        "calls_per_doc": len(ok) / len(ids),
        "rows": len(rows),
        "rejected": len(rejected),
        "wall_s": max(r.t for r in server.records) if server.records else 0.0,
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.consume_ratelimit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "web_en_1k.json")
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--tpm", type=int, default=400_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--consumers", type=int, default=1, help="processes sharing the one limit")
    parser.add_argument("--backend", choices=["openai", "vllm"], default=None, help="default: none (auto)")
    parser.add_argument("--trim-s", type=int, default=3, help="seconds left out at each end of the run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if not args.source.is_file():
        raise SystemExit(f"{args.source} not found: pass --source FILE (a JSON array of {{'webpage': ...}})")
    results = []
    for run in range(args.runs):
        r = run_once(args, seed=run)
        results.append(r)
        print(
            f"run {run}: {r['rpm']:.0f} req/min, {r['tpm']:.0f} tok/min, binding limit used {r['binding_share']:.1%}, "
            f"429s {r['share_429']:.1%}, prompt+completion tokens {r['real_share']:.1%} of the token limit over the "
            f"run, {r['calls_per_doc']:.2f} calls/doc, {r['rows']:.0f} rows + "
            f"{r['rejected']:.0f} rejected, {r['wall_s']:.1f}s"
        )
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(
        f"median of {args.runs}, {args.consumers} consumer(s): binding limit used {med['binding_share']:.1%}, "
        f"429s {med['share_429']:.1%}, {med['calls_per_doc']:.2f} calls/doc (method: 3.33), {med['wall_s']:.1f}s"
    )


if __name__ == "__main__":
    main()
