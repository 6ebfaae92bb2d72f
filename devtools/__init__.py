"""Local stand-ins for the services around the pipeline (a Kafka-protocol broker, a fault-injecting
OpenAI-compatible server, WARC files), shared by the tests, the benchmarks and the offline demo."""
