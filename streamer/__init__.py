"""The runtime: reads documents (file or Kafka), runs the WebR engine, writes rolled Parquet."""
