"""The LLM side at capacity: this project vs the same WebR chain with Curator vs 50 synchronous threads, one run.

    python -m bench.capacity                        # 400 docs, capacity 32, 0.3 s + 4 ms/token, 3 runs
    python -m bench.capacity --rpm 600 --tpm 400000 --docs 150   # the per-second rate-limited server instead
    python -m bench.capacity --clients ours --consumers 4 --no-server-metrics   # four of ours share one server

Each client runs as its own process, as a user runs it, against a fresh in-repo fake server (devtools.fakeopenai)
started by this process:
- `ours`: `python -m streamer.consume --source F --output DIR --backend B --max-concurrency C` (the real CLI);
- `curator`: `bench.curator_chain`, the chain stage by stage with bespokelabs Curator (from .venv-bench);
- `threads`: `bench.threaded_chain`, a ThreadPoolExecutor of documents on the synchronous OpenAI client.
All three send our prompts with the same per-document plan, so the work per call is the same.

Measured per client: wall time from launch to exit (start-up included), the calls the server answered, and from
the server's own accounting: the service-time bound (sum of the time each call held a slot / capacity: no client
can finish sooner), efficiency = bound / wall, and the share of the server's slots busy in steady state (between
the arrivals of the run's 10% and 90% call), and the tail's idle slots (after the last instant every slot was
busy, in seconds of the whole server). With --rpm/--tpm: throughput in steady state against the binding
limit, the 429s, and as the bound the time the limits need for what the server charged (calls / rpm or charged
tokens / tpm, whichever is longer). Ratios of ours to the others are taken within each run; the summary gives
medians of --runs. `--consumers N` runs ours as N processes at once, each on an equal slice of the documents
and each sizing its own batch (as the members of a consumer group do): the server must stay full, not overfull.
Targets (issue "LLM side at capacity"): ours <= 0.7 x Curator, >= 0.9 of the bound, >= 0.95 of the slots busy.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from bench.ratelimit import make_page, steady_state
from consumers.llm.settings import Sampling
from devtools.fakeopenai import FakeOpenAI, ServerConfig, ServerStats

REPO = Path(__file__).resolve().parents[1]
CLIENTS = ("ours", "curator", "threads")
CURATOR_PYTHON = REPO / ".venv-bench" / "bin" / "python"
STEADY = (0.1, 0.9)  # steady state: between the arrivals of these shares of the run's calls


@dataclass(frozen=True)
class Setup:
    """The server and the clients' knobs, the same for every client of a run."""

    docs: int = 400
    capacity: int | None = 32
    latency_s: float = 0.3
    latency_per_token_s: float = 0.004
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int = 64
    consumers: int = 1  # processes of ours sharing the server, each on a slice of the documents
    threads: int = 50
    # The reference gives up on a document after 5 failed tries; under a per-second limit 50 threads then drop
    # most documents in seconds. Throughput is compared on completed work, so the SDK retries longer here.
    thread_retries: int = 20
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    reply_words: tuple[int, int] = (40, 200)
    server_metrics: bool = True  # False: the server has no vLLM /metrics, so ours sizes its batch from latency
    curator_python: Path = CURATOR_PYTHON
    timeout_s: float = 1800.0

    @property
    def rate_limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    @property
    def backend(self) -> str:
        """A rate-limited server is OpenAI-like (its sampling, no max_tokens charged); a bounded batch is vLLM."""
        return "openai" if self.rate_limited else "vllm"

    def sampling(self) -> dict[str, float | int]:
        return Sampling.reference_defaults(openai=self.backend == "openai").model_dump(exclude_none=True)


@dataclass
class ClientRun:
    client: str
    wall_s: float
    first_call_s: float  # launch to the first call the server saw: start-up
    after_start_s: float  # first call to exit: the wall time without start-up
    calls: int
    docs_ended: int
    rejected: int
    rate_limited: int
    bound_s: float | None = None
    efficiency: float | None = None
    busy_share: float | None = None
    tail_idle_s: float | None = None  # after the last instant every slot was busy: idle slot-seconds / capacity
    queued: float | None = None  # calls waiting for a slot, on average from the first call to the last answer
    binding_share: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)


# -- input -------------------------------------------------------------------------------------------------------------


def write_documents(dest: Path, n: int, seed: int = 0, pages: Path | None = None) -> None:
    """`n` documents as JSONL: the first `n` pages of `pages` (a JSON array or JSONL with `webpage`/`text`), or
    generated prose of 3-5 KB (4.0 KB on average, like the reference file of crawled pages), the same per seed."""
    if pages is not None:
        raw = pages.read_text()
        items = json.loads(raw) if raw.lstrip().startswith("[") else [json.loads(x) for x in raw.splitlines() if x]
        texts = [item.get("webpage") or item.get("text") for item in items[:n]]
        if len(texts) < n:
            raise SystemExit(f"{pages} has {len(texts)} pages, fewer than --docs {n}")
    else:
        rng = random.Random(seed)
        texts = [make_page(rng, rng.randint(600, 900)) for _ in range(n)]
    with dest.open("w") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": f"bench-{i:05d}", "webpage": text}) + "\n")


# -- the three clients -----------------------------------------------------------------------------------------------


def client_command(client: str, setup: Setup, url: str, source: Path, work: Path) -> list[str]:
    """The command line of one process of `client`, reading `source` and writing under `work`."""
    common = ["--source", str(source), "--base-url", url, "--model", setup.model]
    if client == "ours":
        limits = [
            *(["--max-requests-per-minute", str(setup.rpm)] if setup.rpm else []),
            *(["--max-tokens-per-minute", str(setup.tpm)] if setup.tpm else []),
        ]
        return [
            sys.executable,
            "-m",
            "streamer.consume",
            *common,
            "--output",
            str(work / "out"),
            "--api-key",
            "sk-bench",
            "--backend",
            setup.backend,
            "--max-concurrency",
            str(setup.max_concurrency),
            "--no-progress",
            "--log-level",
            "WARNING",
            *limits,
        ]
    sampling = ["--sampling", json.dumps(setup.sampling()), "--output", str(work / "out.jsonl")]
    if client == "threads":
        pool = ["--threads", str(setup.threads), "--max-retries", str(setup.thread_retries)]
        return [sys.executable, "-m", "bench.threaded_chain", *common, *sampling, *pool]
    if client == "curator":
        limits = [*(["--rpm", str(setup.rpm)] if setup.rpm else []), *(["--tpm", str(setup.tpm)] if setup.tpm else [])]
        return [
            str(setup.curator_python),
            "-m",
            "bench.curator_chain",
            *common,
            *sampling,
            "--work-dir",
            str(work / "curator"),
            "--max-concurrency",
            str(setup.max_concurrency),
            *limits,
        ]
    raise ValueError(f"unknown client {client!r}")


def _ended(client: str, work: Path) -> tuple[int, int]:
    """(documents that ended, of which rejected), from the client's own output."""
    if client == "ours":
        files = list((work / "out").rglob("*.parquet"))
        counts = [(pq.read_metadata(f).num_rows, "_rejected" in f.parts) for f in files]
        return sum(n for n, _ in counts), sum(n for n, rejected in counts if rejected)
    lines = [json.loads(line) for line in (work / "out.jsonl").read_text().splitlines()]
    return len(lines), sum("rejected" in line for line in lines)


def _split(source: Path, n: int, work: Path) -> list[tuple[Path, Path]]:
    """`n` equal slices of the documents, each with its own work folder under `work/out` (read by `_ended`)."""
    lines = source.read_text().splitlines(keepends=True)
    parts = []
    for i in range(n):
        part_work = work / "out" / f"consumer-{i}"
        part_work.mkdir(parents=True)
        part = work / f"docs-{i}.jsonl"
        part.write_text("".join(lines[i::n]))
        parts.append((part, part_work))
    return parts


def run_client(client: str, setup: Setup, source: Path, work: Path, seed: int = 0) -> ClientRun:
    """One client against a fresh server; the server's accounting gives the measures."""
    work.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(
        model=setup.model,
        rpm=setup.rpm,
        tpm=setup.tpm,
        latency_s=setup.latency_s,
        latency_per_token_s=setup.latency_per_token_s,
        capacity=setup.capacity,
        reply_words=setup.reply_words,
        seed=seed,
        expose_metrics=setup.server_metrics,
    )
    parts = _split(source, setup.consumers, work) if client == "ours" and setup.consumers > 1 else [(source, work)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with FakeOpenAI(config) as server:
        started = time.monotonic()
        procs = []
        for part, part_work in parts:
            log = (part_work / "client.log").open("wb")
            command = client_command(client, setup, server.url, part, part_work)
            procs.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        try:
            codes = [proc.wait(timeout=setup.timeout_s) for proc, _ in procs]
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.kill()
                log.close()
        wall = time.monotonic() - started
    for code, (_, part_work) in zip(codes, parts, strict=True):
        if code != 0:
            log_text = (part_work / "client.log").read_text(errors="replace")
            raise SystemExit(f"{client} exited {code}:\n{log_text[-4000:]}")
    ended, rejected = _ended(client, work)
    if ended != setup.docs:
        raise SystemExit(f"{client}: {ended} documents ended, expected {setup.docs} (logs under {work})")
    return _measure(client, setup, server, wall, ended, rejected)


def _measure(client: str, setup: Setup, server: FakeOpenAI, wall: float, ended: int, rejected: int) -> ClientRun:
    stats = server.stats()
    calls = [r for r in server.records if r.messages]  # Curator's rate-limit probe sends no messages
    answered = sorted(r.t for r in calls if r.status == 200)
    first = min((r.t for r in calls), default=float("nan"))
    run = ClientRun(
        client=client,
        wall_s=wall,
        first_call_s=first,
        after_start_s=wall - first,
        calls=len(answered),
        docs_ended=ended,
        rejected=rejected,
        rate_limited=stats.rate_limited,
    )
    if setup.capacity:
        run.bound_s = sum(end - start for start, end in stats.service) / setup.capacity
        run.efficiency = run.bound_s / wall
        run.busy_share = _steady_busy(stats, answered, setup.capacity)
        run.tail_idle_s = tail_idle(stats.service, setup.capacity)
        run.queued = queued(stats.service, [r.t for r in server.records if r.status == 200])
    if setup.rate_limited:
        rpm, tpm = steady_state(stats, trim_s=3)
        run.binding_share = max(rate / limit for rate, limit in ((rpm, setup.rpm), (tpm, setup.tpm)) if limit)
        charged = sum(r.charged_tokens for r in calls)
        run.bound_s = 60 * max(n / limit for n, limit in ((len(answered), setup.rpm), (charged, setup.tpm)) if limit)
        run.efficiency = run.bound_s / wall
    return run


def tail_idle(service: list[tuple[float, float]], capacity: int) -> float:
    """The run's tail: from the last instant all `capacity` slots were busy to the last answer, the slot-seconds
    that stood idle, over `capacity` (seconds of the whole server). A chain that runs its last calls one after
    another while the server idles shows here; so does the spread of the last calls' own service times."""
    events = sorted([(start, 1) for start, _ in service] + [(end, -1) for _, end in service])
    busy, full_until = 0, events[0][0] if events else 0.0
    for t, step in events:
        if busy >= capacity:
            full_until = t  # every slot was busy up to this event
        busy += step
    last = events[-1][0] if events else 0.0
    served = sum(max(0.0, end - max(start, full_until)) for start, end in service)
    return (capacity * (last - full_until) - served) / capacity


def queued(service: list[tuple[float, float]], arrivals: list[float]) -> float:
    """Calls waiting for a slot, on average from the first arrival to the last answer: the slots serve in arrival
    order, so the waits sum to the slots' start times less the arrival times."""
    if not service or len(service) != len(arrivals):
        return float("nan")
    span = max(end for _, end in service) - min(arrivals)
    return max(0.0, sum(start for start, _ in service) - sum(arrivals)) / span if span > 0 else 0.0


def _steady_busy(stats: ServerStats, arrivals: list[float], capacity: int) -> float:
    if len(arrivals) < 10:
        return float("nan")
    start, end = (arrivals[int(share * (len(arrivals) - 1))] for share in STEADY)
    return stats.busy_slots(start, end) / capacity


# -- runs and summary ------------------------------------------------------------------------------------------------


def run_all(setup: Setup, clients: list[str], runs: int, source: Path, work: Path) -> list[list[ClientRun]]:
    """`runs` rounds of every client; the order turns each round, so a drift in the machine's load is shared."""
    rounds = []
    for i in range(runs):
        order = clients[i % len(clients) :] + clients[: i % len(clients)]
        results = {c: run_client(c, setup, source, work / f"run{i}" / c, seed=i) for c in order}
        ours = results.get("ours")
        for name, other in results.items():
            if ours is not None and name != "ours":
                ours.ratios[name] = ours.wall_s / other.wall_s
        rounds.append([results[c] for c in clients])
        for r in rounds[-1]:
            print(f"run {i + 1}  {_line(r)}", flush=True)
    return rounds


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# (header, unit, attribute, format) of every measure, for the per-run lines and the Markdown table
COLUMNS = (
    ("wall", "s", "wall_s", ".1f"),
    ("first call", "s", "first_call_s", ".1f"),
    ("after it", "s", "after_start_s", ".1f"),
    ("calls", "", "calls", ".0f"),
    ("rejected", "", "rejected", ".0f"),
    ("bound", "s", "bound_s", ".1f"),
    ("efficiency", "", "efficiency", ".2f"),
    ("slots busy", "", "busy_share", ".2f"),
    ("tail idle", "s", "tail_idle_s", ".1f"),
    ("queued", "", "queued", ".1f"),
    ("binding limit", "", "binding_share", ".1%"),
    ("429s", "", "rate_limited", ".0f"),
)


def _line(r: ClientRun) -> str:
    measures = "  ".join(f"{name} {_fmt(getattr(r, attr), spec)}{unit}" for name, unit, attr, spec in COLUMNS)
    ratios = "  ".join(f"ours/{k} {v:.2f}" for k, v in r.ratios.items())
    return f"{r.client:>8}  {measures}  {ratios}"


def _table(medians: list[ClientRun]) -> str:
    head = ["client", *(f"{name} {unit}".strip() for name, unit, _, _ in COLUMNS), "ours / it"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    ours = next((m for m in medians if m.client == "ours"), None)
    for m in medians:
        ratio = ours.ratios.get(m.client) if ours is not None else None
        cells = [m.client, *(_fmt(getattr(m, attr), spec) for _, _, attr, spec in COLUMNS), _fmt(ratio, ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_run(client: str, runs: list[ClientRun]) -> ClientRun:
    def med(name: str) -> float | None:
        values = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        return statistics.median(values) if values else None

    numbers = {name: med(name) for name in ClientRun.__dataclass_fields__ if name not in ("client", "ratios")}
    ratios = {k: statistics.median(r.ratios[k] for r in runs) for k in runs[0].ratios}
    return ClientRun(client=client, ratios=ratios, **numbers)  # type: ignore[arg-type]


def summary(setup: Setup, rounds: list[list[ClientRun]]) -> list[ClientRun]:
    medians = [median_run(runs[0].client, list(runs)) for runs in zip(*rounds, strict=True)]
    print(f"\nmedian of {len(rounds)} run(s):")
    for m in medians:
        print(f"  median  {_line(m)}")
    print("\n" + _table(medians))
    ours = next((m for m in medians if m.client == "ours"), None)
    if ours is not None:
        print(
            "\nratios of wall time within each run, median: "
            + ", ".join(f"ours / {k} = {v:.2f}" for k, v in ours.ratios.items())
        )
        if setup.capacity and not setup.rate_limited and "curator" in ours.ratios:
            met = ours.ratios["curator"] <= 0.7 and (ours.efficiency or 0) >= 0.9 and (ours.busy_share or 0) >= 0.95
            print(f"targets (<= 0.7 x Curator, >= 0.9 of the bound, >= 0.95 slots busy): {'met' if met else 'NOT met'}")
    return medians


def make_parser() -> argparse.ArgumentParser:
    d = Setup()
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=None, help="default: 400, or 150 with --rpm/--tpm")
    parser.add_argument("--pages", type=Path, default=None, help="JSON array or JSONL of pages instead of generated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated, of {', '.join(CLIENTS)}")
    parser.add_argument("--capacity", type=int, default=None, help=f"default {d.capacity}; 0 or --rpm/--tpm: unbounded")
    parser.add_argument("--latency", type=float, default=d.latency_s)
    parser.add_argument("--latency-per-token", type=float, default=d.latency_per_token_s)
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute, enforced per second")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute, enforced per second")
    parser.add_argument("--max-concurrency", type=int, default=d.max_concurrency, help="ours and Curator's")
    parser.add_argument("--consumers", type=int, default=d.consumers, help="processes of ours sharing the server")
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--thread-retries", type=int, default=d.thread_retries, help="the SDK's max_retries")
    parser.add_argument("--model", default=d.model)
    parser.add_argument(
        "--no-server-metrics",
        dest="server_metrics",
        action="store_false",
        help="the server answers GET /metrics with 404, as servers other than vLLM do (ours then sizes its batch "
        "from latency alone)",
    )
    parser.add_argument("--curator-python", type=Path, default=d.curator_python)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep outputs and logs here (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run and the medians here")
    return parser


def setup_from(args: argparse.Namespace) -> Setup:
    limited = args.rpm is not None or args.tpm is not None
    capacity = (None if limited else Setup.capacity) if args.capacity is None else (args.capacity or None)
    return Setup(
        docs=args.docs or (150 if limited else 400),
        capacity=capacity,
        latency_s=args.latency,
        latency_per_token_s=args.latency_per_token,
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrency=args.max_concurrency,
        consumers=args.consumers,
        threads=args.threads,
        thread_retries=args.thread_retries,
        model=args.model,
        server_metrics=args.server_metrics,
        curator_python=args.curator_python,
    )


def main(argv: list[str] | None = None) -> list[ClientRun]:
    args = make_parser().parse_args(argv)
    setup = setup_from(args)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if "curator" in clients and not setup.curator_python.exists():
        raise SystemExit(f"{setup.curator_python} not found: `make install-bench` makes Curator's virtualenv")
    load = os.getloadavg()
    print(f"{setup}\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = work / "docs.jsonl"
        write_documents(source, setup.docs, pages=args.pages)
        rounds = run_all(setup, clients, args.runs, source, work)
    medians = summary(setup, rounds)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        payload = {"setup": asdict(setup), "runs": [[asdict(r) for r in rnd] for rnd in rounds]}
        payload["medians"] = [asdict(m) for m in medians]
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return medians


if __name__ == "__main__":
    main()
