"""Our process's CPU per LLM call at zero server latency, and the start-up time to the first call.

    python -m bench.client_cpu                         # pages generated here, 200 and 1000 documents
    python -m bench.client_cpu --pages ../shared/data/web_en_1k.json --profile /tmp/consume.prof
    python -m bench.client_cpu --baseline /tmp/main    # another checkout in turns with this one: the ratio

CPU per call: `python -m streamer.consume` runs as a subprocess on N documents against the in-repo fake server
(latency 0, in a process of its own so its CPU is not counted); the consumer's user + system CPU comes from
`os.wait4` on its pid, its calls from the `llm_calls` columns of what it wrote. The marginal cost is
(CPU(large) - CPU(small)) / (calls(large) - calls(small)), which leaves start-up (imports, settings, the first
connection) out; the median of `--repeats` pairs of runs is reported.

Start-up: from the exec of the CLI to the first request arriving at the fake server (here in-process, on the
same monotonic clock), one document per run, median of `--startup-repeats`.
With `--baseline`, the other checkout's CLI runs in turns with this one's (same pages, same server), so a busy
machine slows both alike and the printed ratio is measured within one run.
Target: marginal CPU per call <= 1 ms; start-up < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from bench.ratelimit import make_page
from devtools.fakeopenai import FakeOpenAI
from devtools.fakeopenai.server import ServerConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    docs: int
    calls: int
    cpu_s: float
    wall_s: float


def write_docs(pages: list[str], n: int, dest: Path) -> Path:
    """The first `n` pages (cycled when there are fewer) as JSON lines with ids."""
    with dest.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"bench-{i:05d}", "webpage": pages[i % len(pages)]}) + "\n")
    return dest


def load_pages(path: Path | None, n: int, seed: int) -> list[str]:
    """Pages of a file in the reference format (a JSON array of {"webpage": ...}), or generated prose."""
    if path is not None:
        return [p["webpage"] for p in json.loads(path.read_text())][:n]
    rng = random.Random(seed)
    return [make_page(rng, rng.randint(300, 1500)) for _ in range(n)]


def consume_cmd(source: Path, out: Path, url: str, concurrency: int, profile: Path | None = None) -> list[str]:
    prefix = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "streamer.consume"]
    return [
        *prefix,
        "--source",
        str(source),
        "--output",
        str(out),
        "--base-url",
        url,
        "--api-key",
        "sk-bench",
        "--model",
        "gpt-4o-mini",
        "--max-concurrency",
        str(concurrency),
        "--no-progress",
        "--log-level",
        "WARNING",
    ]


def _calls(out: Path) -> int:
    return sum(sum(pq.read_table(f, columns=["llm_calls"]).column(0).to_pylist()) for f in out.rglob("*.parquet"))


def run_consume(cmd: list[str], out: Path, docs: int, repo: Path = REPO) -> Run:
    """Run the CLI of the checkout `repo`, charging its own CPU (not the fake server's) via wait4 on its pid."""
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"consume failed ({proc.returncode}):\n{stderr.decode(errors='replace')[-3000:]}")
    return Run(docs, _calls(out), usage.ru_utime + usage.ru_stime, wall)


class ServerProcess:
    """`python -m devtools.fakeopenai` in its own process, so its CPU is not the consumer's."""

    def __init__(self, latency_s: float) -> None:
        cmd = [sys.executable, "-m", "devtools.fakeopenai", "--port", "0", "--latency", str(latency_s)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "fake OpenAI server at" not in line:
            self.proc.kill()
            raise SystemExit(f"fake server did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[-1].strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measure_cpu(args: argparse.Namespace, pages: list[str], tmp: Path) -> dict[str, list[float]]:
    """Marginal CPU per call (seconds) of each checkout, one per repeat; the checkouts take turns within a
    repeat, so a busy machine slows them alike. Prints every run."""
    server = ServerProcess(latency_s=0.0)
    sources = {n: write_docs(pages, n, tmp / f"docs-{n}.jsonl") for n in (args.small, args.large)}
    marginal: dict[str, list[float]] = {name: [] for name in args.checkouts}
    try:
        for repeat in range(args.repeats):
            for name, repo in args.checkouts.items():
                runs = {}
                for n, source in sources.items():
                    out = tmp / f"out-{name}-{repeat}-{n}"
                    r = runs[n] = run_consume(consume_cmd(source, out, server.url, args.concurrency), out, n, repo)
                    print(
                        f"{name} repeat {repeat}: {r.docs} docs, {r.calls} calls, CPU {r.cpu_s:.2f}s "
                        f"({1000 * r.cpu_s / max(r.calls, 1):.2f} ms/call overall), wall {r.wall_s:.1f}s",
                        flush=True,
                    )
                small, large = runs[args.small], runs[args.large]
                marginal[name].append((large.cpu_s - small.cpu_s) / max(large.calls - small.calls, 1))
                print(f"{name} repeat {repeat}: marginal CPU {1000 * marginal[name][-1]:.3f} ms/call", flush=True)
    finally:
        server.stop()
    return marginal


def measure_startup(args: argparse.Namespace, pages: list[str], tmp: Path) -> dict[str, list[float]]:
    """Seconds from exec to the first request at the server, per checkout, one per repeat (taking turns)."""
    source = write_docs(pages, 1, tmp / "docs-1.jsonl")
    times: dict[str, list[float]] = {name: [] for name in args.checkouts}
    with FakeOpenAI(ServerConfig(latency_s=0.0)) as server:
        for repeat in range(args.startup_repeats):
            for name, repo in args.checkouts.items():
                server.reset()
                out = tmp / f"out-startup-{name}-{repeat}"
                t0 = server.now()
                run_consume(consume_cmd(source, out, server.url, args.concurrency), out, 1, repo)
                times[name].append(min(r.t for r in server.records) - t0)
                print(f"{name} start-up {repeat}: {times[name][-1]:.3f}s to the first call", flush=True)
    return times


def machine_speed_ms() -> float:
    """Milliseconds for `sum(range(10**6))`, best of 5. Absolute CPU figures differ between machines, even VMs
    of one kind, by a factor of two or more; each run states this speed so runs on two machines can be compared."""
    return min(timeit.repeat("sum(range(10**6))", number=10, repeat=5)) / 10 * 1000


def _report(what: str, unit: str, scale: float, results: dict[str, list[float]], target: str) -> None:
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, median in medians.items():
        print(f"{what} [{name}]: median {scale * median:.3f} {unit} ({target})")
    if "baseline" in medians and medians["this"]:
        print(f"{what}: baseline / this = {medians['baseline'] / medians['this']:.2f}x")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.client_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=Path, default=None, help="JSON array of {'webpage': ...}; default: generated")
    parser.add_argument("--small", type=int, default=200, help="documents of the smaller run")
    parser.add_argument("--large", type=int, default=1000, help="documents of the larger run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startup-repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=Path, default=None, help="also run the large run under cProfile to FILE")
    parser.add_argument("--skip-cpu", action="store_true", help="start-up only")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. `git worktree add /tmp/main main`) run in turns with this one, for a ratio",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    args.checkouts = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    pages = load_pages(args.pages, args.large, args.seed)
    print(f"machine speed: sum(range(10**6)) in {machine_speed_ms():.1f} ms")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _report("start-up to the first call", "s", 1.0, measure_startup(args, pages, tmp), "target < 1 s")
        if args.skip_cpu:
            return
        _report("marginal CPU per call", "ms", 1000.0, measure_cpu(args, pages, tmp), "target <= 1 ms")
        if args.profile is not None:
            server = ServerProcess(latency_s=0.0)
            try:
                source = write_docs(pages, args.large, tmp / f"docs-{args.large}.jsonl")
                out = tmp / "out-profile"
                run_consume(consume_cmd(source, out, server.url, args.concurrency, args.profile), out, args.large)
            finally:
                server.stop()
            print(f"profile of {args.large} documents written to {args.profile}")


if __name__ == "__main__":
    main()
