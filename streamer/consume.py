"""`python -m streamer.consume`: turn crawled documents into WebR instruction pairs.

    python -m streamer.consume --source pages.jsonl --output out/ --model gpt-4o-mini --seed 1
    python -m streamer.consume --bootstrap-servers kafka:9092 --topic pages --group-id webr --output s3://b/webr

Exit codes: 0 every record has an outcome on disk (a file run), or a Kafka run stopped with everything
committed; 1 the run failed or stopped with offsets left to reprocess; 2 invalid settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import AsyncIterator

from pydantic import ValidationError

from consumers.webr.dedup import DedupStage
from consumers.webr.processor import DocumentProcessor
from core.exceptions import PipelineError, SettingsError
from streamer.engine import Engine
from streamer.files import count_records, run_file
from streamer.kafka.settings import KafkaRunConfig
from streamer.logs import setup_logging
from streamer.progress import Progress
from streamer.settings import ConsumeSettings

log = logging.getLogger("streamer.consume")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.consume",
        description="Generate instruction-tuning pairs from web documents with the WebR method. "
        "Flags override WEBR_* environment variables (OPENAI_API_KEY and OPENAI_BASE_URL are read too), "
        "which override the TOML file given with --config.",
    )
    ConsumeSettings.add_flags(parser)
    return parser


@contextlib.asynccontextmanager
async def webr_engine(settings: ConsumeSettings) -> AsyncIterator[Engine]:
    """The engine of both kinds of run: `settings.llm`'s client driving WebR, and WebR's dedup stage."""
    from consumers.llm.client import OpenAIChatClient  # the HTTP stack is not needed for --help

    webr = settings.webr
    async with OpenAIChatClient(settings.llm) as llm:
        yield Engine(DocumentProcessor(llm, webr), DedupStage(webr.dedup()), llm.stats, llm.limiter.set_share)


async def _run_file(settings: ConsumeSettings) -> int:
    assert settings.run.source is not None
    show = settings.run.progress and sys.stderr.isatty()
    progress = Progress(count_records(settings.run.source) if show else None, enabled=show)
    try:
        async with webr_engine(settings) as engine:
            summary = await run_file(settings, engine, on_progress=progress.update)
    finally:
        progress.close()
    print(summary.render(), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        settings = ConsumeSettings.from_args(args)
    except (ValidationError, SettingsError) as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.run.log_level, settings.run.log_format)
    try:
        if settings.kafka.bootstrap_servers:
            from streamer.kafka.runtime import run_kafka  # kafka-python: not imported by file runs

            return run_kafka(KafkaRunConfig.from_settings(settings), functools.partial(webr_engine, settings))
        return asyncio.run(_run_file(settings))
    except KeyboardInterrupt:
        log.warning("interrupted: files written so far are complete; run again to finish the input")
        return 130
    except (PipelineError, OSError) as exc:
        log.error("run failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
