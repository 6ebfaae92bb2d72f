"""Settings of `python -m streamer.consume`: the component models, nested, with flat flags and variables.

Each component declares its own fields and defaults (`LLMSettings`, `WebRSettings`, `KafkaSettings`,
`StorageSettings`, and the run's own below); `ConsumeSettings` only composes them, so `--max-concurrency`,
`WEBR_MAX_CONCURRENCY` and `max_concurrency` in the TOML file (at the top or under `[llm]`) all reach
`settings.llm.max_concurrency`. Flags win over the environment, which wins over the TOML file (`core.settings`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from consumers.llm.settings import LLMSettings, Sampling
from consumers.webr.processor import WebRSettings
from core.settings import LayeredSettings
from core.storage import StorageSettings
from streamer.kafka.settings import KafkaSettings
from streamer.sinks.parquet import DEFAULT_ROLL_RECORDS, RollPolicy


class SinkSettings(BaseModel):
    """Where the output goes and how it is cut into files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: str = Field(description="output root: a local directory or s3://bucket/prefix")
    roll_records: int = Field(
        default=DEFAULT_ROLL_RECORDS,
        gt=0,
        description="input records per output file (a crash redoes at most this many per partition)",
    )


class RunSettings(BaseModel):
    """The input of a file run, and how the process runs and reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str | None = Field(
        default=None, description="input file, a JSON array or JSONL of documents (or use --bootstrap-servers)"
    )
    max_in_flight_docs: int | None = Field(
        default=None, gt=0, description="documents being processed at once (default: 2 x max-concurrency)"
    )
    progress: bool = Field(default=True, description="progress bar on file runs (off when stderr is not a TTY)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")
    log_format: Literal["text", "json"] = Field(default="text", description="log format")


class ConsumeSettings(LayeredSettings):
    """Every option of a consume run, one section per component. Field descriptions are the `--help`."""

    run: RunSettings
    sink: SinkSettings
    storage: StorageSettings
    llm: LLMSettings
    webr: WebRSettings
    kafka: KafkaSettings

    @field_validator("llm")
    @classmethod
    def _reference_sampling(cls, llm: LLMSettings) -> LLMSettings:
        """Sampling values not given take the backend's reference (`Sampling.reference_defaults`)."""
        given = llm.sampling.model_dump(exclude_none=True)
        return llm.model_copy(update={"sampling": Sampling.reference_defaults(llm.is_openai).model_copy(update=given)})

    @model_validator(mode="after")
    def _one_source(self) -> ConsumeSettings:
        if bool(self.run.source) == bool(self.kafka.bootstrap_servers):
            raise ValueError("give exactly one input: --source FILE, or --bootstrap-servers with --topic")
        return self

    def roll_policy(self) -> RollPolicy:
        """A file run's: by records only (record time is a Kafka run's, `KafkaRunConfig`)."""
        return RollPolicy(max_records=self.sink.roll_records)

    @property
    def in_flight_docs(self) -> int:
        return self.run.max_in_flight_docs or 2 * self.llm.max_concurrency
