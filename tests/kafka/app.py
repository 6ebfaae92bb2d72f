"""A consumer process for the Kafka tests: the real runtime, the real WebR engine and LLM client, real HTTP.

    python -m tests.kafka.app --bootstrap-servers H:P --topic T --group-id G --output URI --base-url URL ...

Only the flag parsing differs from `python -m streamer.consume` (which embeds the same `KafkaSettings` fields):
the tests start this module as a subprocess so they can SIGKILL it, restart it and run two of them at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

from pydantic import SecretStr

from consumers.llm.client import OpenAIChatClient
from consumers.llm.settings import LLMSettings
from consumers.webr.processor import DocumentProcessor, WebRSettings
from streamer.kafka.runtime import run_kafka
from streamer.kafka.settings import KafkaSettings
from streamer.logs import setup_logging


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.kafka.app")
    for name, field in KafkaSettings.model_fields.items():
        kind = field.annotation if field.annotation in (int, float, str) else None
        if name in ("stop_after_idle", "grace_period_s"):
            kind = float
        elif name in ("metrics_port", "roll_interval_ms", "session_timeout_ms", "max_poll_interval_ms"):
            kind = int
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind or str, default=field.default)
    parser.add_argument("--output", required=True)
    parser.add_argument("--s3-endpoint-url", default=None)
    parser.add_argument("--roll-records", type=int, default=10)
    parser.add_argument("--max-in-flight-docs", type=int, default=16)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    setup_logging(args.log_level, "json")
    settings = SimpleNamespace(**vars(args), in_flight_docs=args.max_in_flight_docs)
    llm = LLMSettings(base_url=args.base_url, api_key=SecretStr("sk-test"), model="gpt-4o-mini", max_concurrency=16)

    @asynccontextmanager
    async def processor() -> AsyncIterator[DocumentProcessor]:
        async with OpenAIChatClient(llm, backoff_initial_s=0.05, backoff_max_s=0.5) as client:
            yield DocumentProcessor(client, WebRSettings(seed=args.seed))

    return run_kafka(settings, processor)


if __name__ == "__main__":
    sys.exit(main())
