"""Settings of the LLM client: one frozen model, defaults declared once, the key kept secret."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from consumers.llm.pricing import load_price_table
from core.settings import Knob

OPENAI_BASE_URL = "https://api.openai.com/v1"
Backend = Literal["auto", "openai", "vllm"]


def is_openai(base_url: str) -> bool:
    """OpenAI's own API (rate limited, priced) as opposed to a self-hosted OpenAI-compatible server."""
    return (urlparse(base_url).hostname or "").endswith("openai.com")


def split_urls(value: object) -> object:
    """Base URLs from one URL, a comma-separated list, or a list of either (a flag given several times)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return value
    urls = (u.strip().rstrip("/") for item in value for u in str(item).split(","))
    return tuple(dict.fromkeys(u for u in urls if u))  # in order, each once


BaseURLs = Annotated[tuple[str, ...], BeforeValidator(split_urls)]
"""One or more OpenAI-compatible API roots (replicas of one model), given as a list or comma-separated."""


class Sampling(BaseModel):
    """Sampling parameters sent with every call; unset values are left to the server's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="default: 1.0 OpenAI, 0.6 vLLM")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="default: API default OpenAI, 0.9 vLLM")
    max_tokens: int | None = Field(default=None, gt=0, description="completion cap; default: none OpenAI, 4096 vLLM")

    @classmethod
    def reference_defaults(cls, openai: bool) -> Sampling:
        """The WebR reference: GPT-4o-mini at temperature 1.0 and API defaults; vLLM at 0.6 / 0.9 / 4096."""
        if openai:
            return cls(temperature=1.0)
        return cls(temperature=0.6, top_p=0.9, max_tokens=4096)


class LLMSettings(BaseModel):
    """Where to send calls and how hard to push."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_urls: Annotated[BaseURLs, Knob(name="base_url", env=("OPENAI_BASE_URL",))] = Field(
        default=(OPENAI_BASE_URL,),
        min_length=1,
        validation_alias=AliasChoices("base_urls", "base_url"),
        description="OpenAI-compatible API root, e.g. http://vllm-host:8000/v1; repeat it (or separate with commas) "
        "for several replicas of the model: calls are spread over them",
    )
    backend: Backend = Field(
        default="auto",
        description="whose reference defaults apply (sampling, prices): openai, vllm, or auto by the --base-url host",
    )
    api_key: Annotated[SecretStr, Knob(env=("OPENAI_API_KEY",))] = Field(
        default=SecretStr(""), description="API key (default: $OPENAI_API_KEY); never logged"
    )
    model: str = Field(default="gpt-4o-mini", description="model name as the server knows it")
    max_concurrency: int = Field(default=64, gt=0, description="LLM requests in flight at once, over all replicas")
    adaptive_concurrency: bool = Field(
        default=True,
        description="size each replica's requests in flight to its batch (vLLM's /metrics, else latency); "
        "servers with rate limits (OpenAI) keep max_concurrency",
    )
    scheduler_poll_s: float = Field(default=0.5, gt=0, description="how often a replica's /metrics is read")
    eject_after_failures: int = Field(
        default=3, ge=1, description="transient failures in a row that take a replica out of rotation"
    )
    health_check_initial_s: float = Field(
        default=0.5, gt=0, description="first health check of an ejected replica after this; then doubling"
    )
    health_check_max_s: float = Field(default=5.0, gt=0, description="longest wait between health checks")
    max_requests_per_minute: int | None = Field(default=None, gt=0, description="request budget per minute")
    max_tokens_per_minute: int | None = Field(default=None, gt=0, description="token budget per minute")
    request_timeout_s: float = Field(default=120.0, gt=0, description="timeout of one LLM request")
    give_up_after_s: Annotated[float | None, Knob(name="give_up_after")] = Field(
        default=None,
        gt=0,
        description="reject a document whose LLM call still fails transiently after SECONDS (default: it waits)",
    )
    rate_limit_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="fixed share of the limits for a process outside a Kafka group, e.g. 0.25 for each of 4 (a group "
        "member ignores it: its partitions are its share); within it the share still adapts to the server's answers",
    )
    sampling: Sampling = Sampling()
    price_table: Path | None = Field(
        default=None,
        description="TOML or JSON file of model -> input, cached_input, output USD per million tokens, merged "
        "over the built-in OpenAI prices; its entries price any server (a vLLM model too)",
    )
    price_input_per_mtok: float | None = Field(default=None, ge=0, description="overrides the table's input price")
    price_cached_input_per_mtok: float | None = Field(
        default=None, ge=0, description="overrides the table's cached-input price"
    )
    price_output_per_mtok: float | None = Field(default=None, ge=0, description="overrides the table's output price")

    @property
    def is_openai(self) -> bool:
        """OpenAI semantics (reference sampling, prices): OpenAI itself, or a gateway declared as such."""
        return self.backend == "openai" or (self.backend == "auto" and any(map(is_openai, self.base_urls)))

    @property
    def rate_limited(self) -> bool:
        """Limits configured or implied (OpenAI): the rate limiter, not the batch, decides what goes out."""
        limits = self.max_requests_per_minute is not None or self.max_tokens_per_minute is not None
        return limits or self.is_openai

    @field_validator("price_table")
    @classmethod
    def _price_table_readable(cls, path: Path | None) -> Path | None:
        """A typo in the file fails the settings, not the first priced call."""
        if path is not None:
            load_price_table(path)
        return path

    @model_validator(mode="after")
    def _key_needed_for_openai(self) -> LLMSettings:
        if any(map(is_openai, self.base_urls)) and not self.api_key.get_secret_value():
            raise ValueError("an API key is required for OpenAI: set OPENAI_API_KEY or pass --api-key")
        return self
