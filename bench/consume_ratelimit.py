"""The whole `python -m streamer.consume` under OpenAI-style limits: capacity used, 429s, calls per document.

    python -m bench.consume_ratelimit --source ../shared/data/web_en_1k.json --docs 60 --runs 3
    python -m bench.consume_ratelimit --kafka --consumers 3 --docs 180   # one group of three, one limit
    python -m bench.consume_ratelimit --consumers 3 --docs 180           # three file runs, one limit

Takes the first `--docs` pages of a file in the reference format, gives them `id`s, starts the fake OpenAI
server with `--rpm`/`--tpm` enforced per second (as OpenAI enforces per-minute limits in slices), and runs
`--consumers` CLI processes at once, each told the whole limit (as users do: nobody tells a process how many
others share the organisation's limit): file runs on equal slices of the pages, or with `--kafka` members of
one consumer group on a topic of `--partitions` in tansu, fed once every member owns its partitions.
Throughput is read from the server's own per-second accounting (what it charged) in steady state. By default
no `--backend` is given and the server's loopback host is not OpenAI's, so the run has vLLM semantics (per-step
max_tokens), as for a gateway.
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


def _consume_cmd(args: argparse.Namespace, server_url: str, out: Path, seed: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamer.consume",
        "--output",
        str(out),
        "--base-url",
        server_url,
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
        *(["--backend", args.backend] if args.backend else []),
    ]


def _run_files(args: argparse.Namespace, cmd: list[str], tmp: Path, lines: list[str]) -> tuple[list[dict], list[dict]]:
    """`--consumers` file runs at once, each on an equal slice of the pages."""
    procs = []
    for i in range(args.consumers):
        part = tmp / f"part-{i}.jsonl"
        part.write_text("".join(lines[i :: args.consumers]))
        procs.append(
            subprocess.Popen(
                [*cmd, "--source", str(part), "--log-level", "WARNING"], cwd=REPO, stderr=subprocess.PIPE, text=True
            )
        )
    for proc in procs:
        _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"consume failed ({proc.returncode}):\n{stderr[-3000:]}")
    return _outcomes(tmp / "out")


def _run_kafka(args: argparse.Namespace, cmd: list[str], tmp: Path, lines: list[str]) -> tuple[list[dict], list[dict]]:
    """`--consumers` members of one group on a topic of `--partitions` (tansu); the pages are produced once every
    member owns its partitions, so the run measures the group's steady state, not its joining."""
    from devtools.tansu import TansuBroker, create_topic, wait_for

    broker = TansuBroker(tmp / "tansu.log")
    broker.start()
    logs = [tmp / f"member-{i}.log" for i in range(args.consumers)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        topic = create_topic(broker, args.partitions)
        kafka = ["--bootstrap-servers", topic.bootstrap, "--topic", topic.name, "--group-id", topic.group_id]
        flags = ["--stop-after-idle", str(args.idle_s), "--session-timeout-ms", "6000", "--log-format", "json"]
        for log in logs:
            with log.open("wb") as fh:
                procs.append(subprocess.Popen([*cmd, *kafka, *flags], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT))
        wait_for(lambda: _group_settled(logs, args.partitions), 120, "every member to own its partitions")
        messages = [(json.loads(line)["id"].encode(), line.encode()) for line in lines]
        for p in range(args.partitions):  # round robin: equal partitions, so the members finish together
            topic.produce(messages[p :: args.partitions], partition=p)
        for proc, log in zip(procs, logs, strict=True):
            if proc.wait(timeout=args.timeout_s) != 0:
                raise SystemExit(f"member exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return _outcomes(tmp / "out")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        broker.stop()


def _group_settled(logs: list[Path], partitions: int) -> bool:
    """Every member's latest assignment is prepared, and together they own each partition once."""
    owned: list[int] = []
    for log in logs:
        events = [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
        assigned = [i for i, e in enumerate(events) if e["msg"].startswith("assigned partitions")]
        if not assigned or not any(e["msg"].startswith("partitions ready") for e in events[assigned[-1] :]):
            return False
        owned += json.loads(events[assigned[-1]]["msg"].removeprefix("assigned partitions "))
    return sorted(owned) == list(range(partitions))


def run_once(args: argparse.Namespace, seed: int) -> dict[str, float]:
    server = start_server(args.rpm, args.tpm, latency_s=(0.1, 0.3), seed=seed)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "docs.jsonl"
            ids = _write_docs(args.source, args.docs, src)
            lines = src.read_text().splitlines(keepends=True)
            cmd = _consume_cmd(args, server.url, Path(tmp) / "out", seed)
            run = _run_kafka if args.kafka else _run_files
            rows, rejected = run(args, cmd, Path(tmp), lines)
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
    span = max(r.t for r in server.records) - min(r.t for r in server.records) if server.records else 0.0
    return {
        "rpm": rpm,
        "tpm": tpm,
        "real_share": real / (args.tpm / 60 * span) if span else 0.0,
        "binding_share": max(rpm / args.rpm, tpm / args.tpm),
        "share_429": stats.rate_limited / max(stats.requests, 1),
        "calls_per_doc": len(ok) / len(ids),
        "rows": len(rows),
        "rejected": len(rejected),
        "wall_s": span,
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
    parser.add_argument("--kafka", action="store_true", help="the processes are members of one group (tansu)")
    parser.add_argument("--partitions", type=int, default=6, help="of the topic, with --kafka")
    parser.add_argument("--idle-s", type=float, default=5.0, help="--stop-after-idle of the members")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="for the members to finish, with --kafka")
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
