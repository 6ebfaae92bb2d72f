"""Run the fake OpenAI server standalone: `python -m devtools.fakeopenai --port 8000 --rpm 600 --tpm 400000`."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from devtools.fakeopenai.faults import FaultKind
from devtools.fakeopenai.server import FakeOpenAI, ServerConfig


def _fault_rate(text: str) -> tuple[FaultKind, float]:
    kind, _, rate = text.partition("=")
    try:
        return FaultKind(kind), float(rate)
    except ValueError as exc:
        kinds = ", ".join(k.value for k in FaultKind)
        raise argparse.ArgumentTypeError(f"expected KIND=PROBABILITY, KIND one of {kinds}") from exc


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.fakeopenai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute, enforced per second")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute, enforced per second")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per reply (the minimum with --latency-max)")
    parser.add_argument("--latency-per-token", type=float, default=0.0, help="seconds added per output token")
    parser.add_argument("--capacity", type=int, default=None, help="requests served at once; the rest wait")
    parser.add_argument("--latency-max", type=float, default=None, help="draw latency uniformly up to this")
    parser.add_argument("--reply-words", type=int, nargs=2, default=(40, 200), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="refuse other keys with 401")
    parser.add_argument(
        "--fault", type=_fault_rate, action="append", default=[], metavar="KIND=P", help="random fault rate"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    latency = args.latency if args.latency_max is None else (args.latency, args.latency_max)
    config = ServerConfig(
        model=args.model,
        rpm=args.rpm,
        tpm=args.tpm,
        latency_s=latency,
        latency_per_token_s=args.latency_per_token,
        capacity=args.capacity,
        reply_words=tuple(args.reply_words),
        seed=args.seed,
        fault_rates=dict(args.fault),
        api_key=args.api_key,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeOpenAI(config, host=args.host, port=args.port) as server:
        print(f"fake OpenAI server at {server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        stats = server.stats()
        print(f"requests={stats.requests} rate_limited={stats.rate_limited} faults={dict(stats.faults)}")


if __name__ == "__main__":
    main()
