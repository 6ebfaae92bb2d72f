"""The Kafka consumer runtime: a consumer group bridged to the asyncio engine, exactly-once Parquet output.

`runtime.run_kafka` is the entry point `python -m streamer.consume --bootstrap-servers ...` calls.
"""
