"""Settings of `python -m streamer.consume`: flags over environment (`WEBR_*`, `OPENAI_*`) over a TOML file.

This is the only place that reads the environment. It produces the frozen settings of each component
(`llm()`, `webr()`, `roll_policy()`), so components never see flags or variables.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from consumers.llm.settings import OPENAI_BASE_URL, Backend, BaseURLs, LLMSettings, Sampling
from consumers.webr.processor import WebRSettings
from consumers.webr.quality import QualitySettings
from streamer.kafka.settings import KafkaSettings
from streamer.sinks.parquet import DEFAULT_ROLL_RECORDS, RollPolicy

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("webr_config_file", default=None)

_QUALITY = QualitySettings()  # the filters' defaults, declared once in consumers/webr/quality.py


class ConsumeSettings(BaseSettings, KafkaSettings):
    """Every option of a consume run (the Kafka ones come from `KafkaSettings`). Descriptions are the `--help`."""

    model_config = SettingsConfigDict(
        env_prefix="WEBR_", extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )

    # input and output
    source: str | None = Field(
        default=None, description="input file, a JSON array or JSONL of documents (or use --bootstrap-servers)"
    )
    output: str = Field(description="output root: a local directory or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(default=None, description="endpoint of an S3-compatible store (MinIO...)")
    roll_records: int = Field(
        default=DEFAULT_ROLL_RECORDS,
        gt=0,
        description="input records per output file (a crash redoes at most this many per partition)",
    )
    # LLM backend
    base_url: Annotated[BaseURLs, NoDecode] = Field(
        default=(OPENAI_BASE_URL,),
        min_length=1,
        validation_alias=AliasChoices("base_url", "WEBR_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible API root, e.g. http://vllm-host:8000/v1; several replicas of the model: "
        "repeat the flag or separate them with commas",
    )
    api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("api_key", "WEBR_API_KEY", "OPENAI_API_KEY"),
        description="API key (default: $OPENAI_API_KEY); never logged",
    )
    backend: Backend = Field(
        default="auto",
        description="whose reference defaults apply (sampling, prices): openai, vllm, or auto by the --base-url host",
    )
    model: str = Field(default="gpt-4o-mini", description="model name as the server knows it")
    max_concurrency: int = Field(default=64, gt=0, description="LLM requests in flight at once, over all replicas")
    adaptive_concurrency: bool = Field(
        default=True,
        description="size each replica's requests in flight to its batch (vLLM's /metrics, else latency); "
        "without rate limits only",
    )
    max_requests_per_minute: int | None = Field(default=None, gt=0, description="request budget per minute")
    max_tokens_per_minute: int | None = Field(default=None, gt=0, description="token budget per minute")
    request_timeout_s: float = Field(default=120.0, gt=0, description="timeout of one LLM request")
    give_up_after: float | None = Field(
        default=None,
        gt=0,
        description="reject a document whose LLM call still fails transiently after SECONDS (default: it waits)",
    )
    rate_limit_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="fixed share of the limits for this process, e.g. 0.25 for 4 (default: adapt to the server)",
    )
    temperature: float | None = Field(default=None, ge=0, le=2, description="default: 1.0 OpenAI, 0.6 vLLM")
    top_p: float | None = Field(default=None, gt=0, le=1, description="default: API default OpenAI, 0.9 vLLM")
    max_tokens: int | None = Field(default=None, gt=0, description="completion cap; default: none OpenAI, 4096 vLLM")
    # the method
    seed: int = Field(default=0, description="seed of every per-document random choice")
    max_page_tokens: int = Field(default=4096, gt=0, description="pages are cut to this many tokens (recorded)")
    max_page_chars: int = Field(
        default=1_000_000, gt=0, description="pages longer than this many characters are rejected (page_too_large)"
    )
    # output quality (consumers/webr/quality.py): each check rejects with its own reason
    max_repetition: float = Field(
        default=_QUALITY.max_repetition,
        gt=0,
        le=1,
        description="reject a persona, request or response whose repeated sentences or 5-word phrases exceed "
        "this share of it (repetitive_*)",
    )
    min_request_words: int = Field(
        default=_QUALITY.min_request_words, ge=0, description="shorter requests are rejected (short_request)"
    )
    max_request_words: int = Field(
        default=_QUALITY.max_request_words, gt=0, description="longer requests are rejected (long_request)"
    )
    min_response_words: int = Field(
        default=_QUALITY.min_response_words, ge=0, description="shorter responses are rejected (short_response)"
    )
    max_response_words: int = Field(
        default=_QUALITY.max_response_words, gt=0, description="longer responses are rejected (long_response)"
    )
    response_language: bool = Field(
        default=_QUALITY.response_language,
        description="reject a response not in its page's language (wrong_language_response)",
    )
    max_request_copy: float = Field(
        default=_QUALITY.max_request_copy,
        gt=0,
        le=1,
        description="reject a request whose words are more than this share copied from the page (copied_request)",
    )
    max_in_flight_docs: int | None = Field(
        default=None, gt=0, description="documents being processed at once (default: 2 x max-concurrency)"
    )
    # operation
    progress: bool = Field(default=True, description="progress bar on file runs (off when stderr is not a TTY)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")
    log_format: Literal["text", "json"] = Field(default="text", description="log format")

    @model_validator(mode="after")
    def _one_source(self) -> ConsumeSettings:
        if bool(self.source) == bool(self.bootstrap_servers):
            raise ValueError("give exactly one input: --source FILE, or --bootstrap-servers with --topic")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = _CONFIG_FILE.get()
        if config is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
        return tuple(sources)

    @classmethod
    def load(cls, flags: dict[str, object], config_file: Path | None = None) -> ConsumeSettings:
        """Build from typed flags, the environment and an optional TOML file, in that order of precedence."""
        if config_file is not None and not config_file.is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        token = _CONFIG_FILE.set(config_file)
        try:
            return cls(**flags)  # type: ignore[arg-type]
        finally:
            _CONFIG_FILE.reset(token)

    def llm(self) -> LLMSettings:
        base = LLMSettings(
            base_urls=self.base_url,
            backend=self.backend,
            api_key=self.api_key,
            model=self.model,
            max_concurrency=self.max_concurrency,
            adaptive_concurrency=self.adaptive_concurrency,
            max_requests_per_minute=self.max_requests_per_minute,
            max_tokens_per_minute=self.max_tokens_per_minute,
            request_timeout_s=self.request_timeout_s,
            give_up_after_s=self.give_up_after,
            rate_limit_share=self.rate_limit_share,
        )
        given = {
            k: v
            for k, v in (("temperature", self.temperature), ("top_p", self.top_p), ("max_tokens", self.max_tokens))
            if v is not None
        }
        sampling = Sampling.reference_defaults(base.is_openai).model_copy(update=given)
        return base.model_copy(update={"sampling": sampling})

    def webr(self) -> WebRSettings:
        quality = QualitySettings(**{name: getattr(self, name) for name in QualitySettings.model_fields})
        return WebRSettings(
            seed=self.seed, max_page_tokens=self.max_page_tokens, max_page_chars=self.max_page_chars, quality=quality
        )

    def roll_policy(self) -> RollPolicy:
        return RollPolicy(max_records=self.roll_records)

    @property
    def in_flight_docs(self) -> int:
        return self.max_in_flight_docs or 2 * self.max_concurrency
