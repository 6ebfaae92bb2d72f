"""Settings of the Kafka runtime, declared once; `ConsumeSettings` nests them as its `kafka` section.

Output location, roll size and the in-flight bound are shared with file runs and live in `ConsumeSettings`;
`KafkaRunConfig` gathers what the runtime needs from both so the runtime never reads flags or environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.storage import StorageSettings
from streamer.sinks.parquet import RollPolicy

if TYPE_CHECKING:
    from streamer.settings import ConsumeSettings


class KafkaSettings(BaseModel):
    """The Kafka-only options of `python -m streamer.consume`. Descriptions are the `--help` text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str | None = Field(default=None, description="Kafka brokers, HOST:PORT[,HOST:PORT]")
    topic: str | None = Field(default=None, description="topic of documents to consume")
    group_id: str = Field(default="webr-consumers", description="consumer group; processes in a group share work")
    dlq_topic: str | None = Field(default=None, description="dead-letter topic (default: TOPIC.dlq)")
    stop_after_idle: float | None = Field(
        default=None,
        gt=0,
        description="exit 0 once every partition this member owns has been read to its end and committed, "
        "the member has had nothing to do for SECONDS, and the group is stable",
    )
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="serve Prometheus metrics here")
    roll_interval_ms: int | None = Field(
        default=None, gt=0, description="also roll a file once its records span this much record time"
    )
    grace_period_s: float = Field(default=30.0, ge=0, description="on SIGTERM, time for in-flight documents")
    rebalance_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="on a rebalance, time for running documents of revoked partitions to finish before the "
        "complete prefix is committed and the rest cancelled (at most half the max poll interval)",
    )
    session_timeout_ms: int = Field(default=45_000, ge=1000, description="group session timeout")
    max_poll_interval_ms: int = Field(default=300_000, ge=1000, description="group max poll interval")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="where a group with no committed offset starts"
    )
    client_id: str = Field(default="webr-consumer", description="Kafka client id (shows in broker logs)")

    @model_validator(mode="after")
    def _topic_with_brokers(self) -> KafkaSettings:
        if self.bootstrap_servers and not self.topic:
            raise ValueError("--bootstrap-servers needs --topic")
        if self.dlq_topic is not None and self.dlq_topic == self.topic:
            raise ValueError("--dlq-topic must differ from --topic")
        if self.rebalance_grace_s * 1000 > self.max_poll_interval_ms / 2:
            # The rebalance waits for this member meanwhile, and kafka-python leaves the group on its own once a
            # poll is overdue by the max poll interval (the revocation runs inside a poll).
            raise ValueError("--rebalance-grace-s must be at most half of --max-poll-interval-ms")
        return self

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    @property
    def heartbeat_interval_ms(self) -> int:
        """A third of the session timeout, as Kafka recommends, capped at Kafka's default of 3 s."""
        return min(3000, self.session_timeout_ms // 3)


@dataclass(frozen=True, slots=True)
class KafkaRunConfig:
    """Everything `KafkaRuntime` needs, resolved from the settings once."""

    kafka: KafkaSettings
    output: str
    storage: StorageSettings
    roll: RollPolicy
    max_in_flight_docs: int

    @classmethod
    def from_settings(cls, settings: ConsumeSettings) -> KafkaRunConfig:
        kafka = settings.kafka
        return cls(
            kafka=kafka,
            output=settings.sink.output,
            storage=settings.storage,
            roll=RollPolicy(max_records=settings.sink.roll_records, max_record_time_ms=kafka.roll_interval_ms),
            max_in_flight_docs=settings.in_flight_docs,
        )
