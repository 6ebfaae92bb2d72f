"""Topic administration shared by the producer (input topic) and the consumer (dead-letter topic)."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int, replication_factor: int = 1) -> bool:
    """Create `topic` unless it exists; True when this call created it. Safe against a concurrent creator."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="webr-admin")
    try:
        if topic in admin.list_topics():
            return False
        spec = {topic: {"num_partitions": partitions, "replication_factor": replication_factor}}
        result = admin.create_topics(spec, raise_errors=False, wait_for_metadata=True)
        code = result["topics"][0]["error_code"]
        if code == TopicAlreadyExistsError.errno:
            return False
        if code != 0:
            raise RuntimeError(f"could not create topic {topic!r}: {result['topics'][0]}")
        log.info("created topic %s with %d partitions", topic, partitions)
        return True
    finally:
        admin.close()


def partition_count(bootstrap_servers: str, topic: str) -> int | None:
    """How many partitions `topic` has, or None when it does not exist."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="webr-admin")
    try:
        for described in admin.describe_topics([topic]):
            if described.get("error_code", 0) == 0 and described.get("partitions"):
                return len(described["partitions"])
        return None
    finally:
        admin.close()
