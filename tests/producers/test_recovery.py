"""A run taking over a dead producer's file reads the topic only once it stopped growing."""

from __future__ import annotations

import threading
import time

from kafka import KafkaProducer

from devtools.tansu import KafkaTopic, TansuBroker, create_topic
from producers.recovery import wait_until_settled


def test_waits_until_the_topic_stops_growing(kafka_broker: TansuBroker) -> None:
    topic: KafkaTopic = create_topic(kafka_broker, partitions=2, prefix="settle")
    topic.produce([(b"k", b"first")])
    last_write = 0.0

    producer = KafkaProducer(bootstrap_servers=topic.bootstrap, acks="all")

    def late_writes() -> None:  # what a killed producer's socket still delivers, a little at a time
        nonlocal last_write
        for i in range(8):
            time.sleep(0.2)
            producer.send(topic.name, value=f"late {i}".encode(), partition=i % 2).get(timeout=30)
            last_write = time.monotonic()

    writer = threading.Thread(target=late_writes)
    writer.start()
    try:
        wait_until_settled(topic.bootstrap, topic.name, quiet_s=1.5)
        returned = time.monotonic()
    finally:
        writer.join()
        producer.close()
    assert last_write > 0 and returned >= last_write + 1.5, "returned while the topic was still growing"


def test_a_quiet_topic_is_settled_after_the_quiet_period(kafka_broker: TansuBroker) -> None:
    topic = create_topic(kafka_broker, partitions=1, prefix="settle")
    topic.produce([(b"k", b"only")])
    started = time.monotonic()
    wait_until_settled(topic.bootstrap, topic.name, quiet_s=0.5)
    assert 0.5 <= time.monotonic() - started < 10
