"""A consumer process for the Kafka tests: the real runtime, the real WebR engine and LLM client, real HTTP.

    python -m tests.kafka.app --bootstrap-servers H:P --topic T --group-id G --output URI --base-url URL ...

Settings are a `ConsumeSettings` (for the engine and the LLM client) plus the `KafkaSettings` fields, and the
processor is `webr_processor`, as `python -m streamer.consume --bootstrap-servers ...` builds them; only the flag
parsing is this module's. The tests start it as a subprocess so they can SIGKILL it, restart it and run two.
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

from pydantic import SecretStr

from streamer.kafka.runtime import run_kafka, webr_processor
from streamer.kafka.settings import KafkaSettings
from streamer.logs import setup_logging
from streamer.settings import ConsumeSettings

_FLOATS = {"stop_after_idle", "grace_period_s"}
_INTS = {"metrics_port", "roll_interval_ms", "session_timeout_ms", "max_poll_interval_ms"}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.kafka.app")
    for name, field in KafkaSettings.model_fields.items():
        kind = float if name in _FLOATS else int if name in _INTS else str
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=field.default)
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
    consume = ConsumeSettings.model_construct(
        output=args.output, s3_endpoint_url=args.s3_endpoint_url, roll_records=args.roll_records,
        base_url=args.base_url, api_key=SecretStr("sk-test"), model="gpt-4o-mini", seed=args.seed,
        max_concurrency=16, max_in_flight_docs=args.max_in_flight_docs,
    )
    settings = SimpleNamespace(**vars(args), in_flight_docs=consume.in_flight_docs, llm=consume.llm,
                               webr=consume.webr)
    return run_kafka(settings, webr_processor(settings))


if __name__ == "__main__":
    sys.exit(main())
