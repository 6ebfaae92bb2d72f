"""Settings of the LLM client: one frozen model, defaults declared once, the key kept secret."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from core.settings import Knob

OPENAI_BASE_URL = "https://api.openai.com/v1"
Backend = Literal["auto", "openai", "vllm"]


def is_openai(base_url: str) -> bool:
    """OpenAI's own API (rate limited, priced) as opposed to a self-hosted OpenAI-compatible server."""
    return (urlparse(base_url).hostname or "").endswith("openai.com")


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

    base_url: Annotated[str, Knob(env=("OPENAI_BASE_URL",))] = Field(
        default=OPENAI_BASE_URL, description="OpenAI-compatible API root, e.g. http://vllm-host:8000/v1"
    )
    backend: Backend = Field(
        default="auto",
        description="whose reference defaults apply (sampling, prices): openai, vllm, or auto by the --base-url host",
    )
    api_key: Annotated[SecretStr, Knob(env=("OPENAI_API_KEY",))] = Field(
        default=SecretStr(""), description="API key (default: $OPENAI_API_KEY); never logged"
    )
    model: str = Field(default="gpt-4o-mini", description="model name as the server knows it")
    max_concurrency: int = Field(default=64, gt=0, description="LLM requests in flight at once")
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
        description="fixed share of the limits for this process, e.g. 0.25 for 4 (default: adapt to the server)",
    )
    sampling: Sampling = Sampling()
    price_input_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per million input tokens (default: the model's list price)"
    )
    price_cached_input_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per million cached input tokens (default: the model's list price)"
    )
    price_output_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per million output tokens (default: the model's list price)"
    )

    @property
    def is_openai(self) -> bool:
        """OpenAI semantics (reference sampling, prices): OpenAI itself, or a gateway declared as such."""
        return self.backend == "openai" or (self.backend == "auto" and is_openai(self.base_url))

    @model_validator(mode="after")
    def _key_needed_for_openai(self) -> LLMSettings:
        if is_openai(self.base_url) and not self.api_key.get_secret_value():
            raise ValueError("an API key is required for OpenAI: set OPENAI_API_KEY or pass --api-key")
        return self
