"""Settings of the producer commands, on the machinery of `core.settings`: flags > `WEBR_*` variables > TOML.

Every producer writes to a Kafka topic through the same idempotent producer, so they share the `kafka` section;
the rest is each command's own. Flags keep the names the argparse versions had.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from core.settings import LayeredSettings
from core.storage import StorageSettings
from producers.filters import FilterConfig

_FILTERS = FilterConfig()  # the page filters' defaults, declared once in producers/filters.py


class ProducerKafkaSettings(BaseModel):
    """The topic, created when missing, and the Kafka producer (idempotent, acks=all, batched, compressed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(description="HOST:PORT[,HOST:PORT...]")
    topic: str = Field(description="topic the documents go to")
    partitions: int = Field(default=3, gt=0, description="partitions when the topic is created")
    replication_factor: int = Field(default=1, gt=0, description="replication factor when the topic is created")
    compression: Literal["gzip", "snappy", "lz4", "zstd", "none"] = Field(
        default="gzip", description="batch compression"
    )
    linger_ms: int = Field(default=20, ge=0, description="wait this long to fill a batch")
    batch_size: int = Field(default=256 << 10, gt=0, description="bytes per partition batch")
    max_request_size: int = Field(default=8 << 20, gt=0, description="largest message, in bytes")


class FilesSettings(LayeredSettings):
    """`python -m producers.files`."""

    positional = frozenset({"files"})

    files: list[str] = Field(description="JSON array or JSONL files; '-' reads stdin")
    strict: bool = Field(default=False, description="stop at the first invalid record (exit 2)")
    progress: bool = Field(default=True, description="progress bar (on a terminal)")
    max_outstanding: int = Field(
        default=10_000, gt=0, description="unacknowledged sends before waiting for them (bounds memory)"
    )
    kafka: ProducerKafkaSettings


class CrawlSettings(LayeredSettings):
    """`python -m producers.crawl`."""

    positional = frozenset({"files"})

    files: list[str] = Field(default=[], description="WARC or WET files, gzipped or not")
    watch: str | None = Field(default=None, description="DIR or s3://B/P: poll for new crawl files until SIGTERM")
    state_dir: str = Field(description="where progress and dedup keys live (SQLite)")
    languages: str | None = Field(default=None, description="keep only these languages, e.g. en,de (default: all)")
    min_language_score: float = Field(default=0.0, ge=0, le=1, description="drop pages identified less surely")
    min_chars: int = Field(default=_FILTERS.min_chars, ge=0, description="drop pages with fewer main-text chars")
    max_chars: int = Field(default=_FILTERS.max_chars, gt=0, description="drop pages with more main-text chars")
    min_main_share: float = Field(
        default=_FILTERS.min_main_share or 0.0,
        ge=0,
        le=1,
        description="drop pages whose main text is under this share of their visible text (0 = off)",
    )
    gopher_quality: bool = Field(default=_FILTERS.gopher_quality, description="Gopher's quality rules")
    gopher_repetition: bool = Field(default=_FILTERS.gopher_repetition, description="Gopher's repetition rules")
    dedup: str = Field(default="text,url", description="exact dedup by: text, url, both (default) or ''")
    dedup_max_keys: int = Field(default=50_000_000, gt=0, description="keys kept per kind")
    dedup_ttl_days: float = Field(default=90.0, gt=0, description="keys forgotten after this long")
    settle_seconds: float = Field(default=5.0, ge=0, description="--watch: file unchanged this long")
    poll_seconds: float = Field(default=5.0, gt=0, description="--watch: directory poll interval")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="serve Prometheus /metrics here")
    claim_ttl_s: float = Field(
        default=60.0, gt=0, description="a file's lease: another producer takes over a dead holder's file after this"
    )
    scan_timeout_s: float = Field(
        default=120.0, gt=0, description="resuming a file: reading the topic for what was sent may take this long"
    )
    delivery_timeout_s: float = Field(
        default=300.0, gt=0, description="a send not acknowledged within this long fails (retries included)"
    )
    progress: bool = Field(default=True, description="progress bar (on a terminal)")
    storage: StorageSettings
    kafka: ProducerKafkaSettings

    @model_validator(mode="after")
    def _files_or_watch(self) -> CrawlSettings:
        if bool(self.files) == bool(self.watch):
            raise ValueError("give crawl files or --watch DIR (not both)")
        # The Kafka client's own rule: a batch may wait `linger_ms`, then a request `request_timeout_ms` (30 s).
        if self.delivery_timeout_s * 1000 < self.kafka.linger_ms + 30_000:
            raise ValueError("--delivery-timeout-s must be at least --linger-ms + 30 s")
        return self

    def filters(self) -> FilterConfig:
        return FilterConfig(
            min_chars=self.min_chars,
            max_chars=self.max_chars,
            min_main_share=self.min_main_share if self.min_main_share > 0 else None,
            gopher_quality=self.gopher_quality,
            gopher_repetition=self.gopher_repetition,
        )


class HttpIngestSettings(LayeredSettings):
    """`python -m producers.http_ingest`."""

    ingest_tokens: list[SecretStr] = Field(
        default=[], description="bearer tokens accepted (WEBR_INGEST_TOKENS=a,b); never logged"
    )
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="port to listen on")
    max_body_bytes: int = Field(default=32 << 20, gt=0, description="largest request body")
    max_records: int = Field(default=10_000, gt=0, description="records per request")
    max_buffered: int = Field(default=20_000, gt=0, description="unacknowledged documents before 429")
    shutdown_timeout_s: float = Field(default=60.0, ge=0, description="on SIGTERM, time for requests in progress")
    kafka: ProducerKafkaSettings

    @model_validator(mode="after")
    def _some_token(self) -> HttpIngestSettings:
        if not any(t.get_secret_value() for t in self.ingest_tokens):
            raise ValueError("WEBR_INGEST_TOKENS must hold at least one bearer token")
        return self
