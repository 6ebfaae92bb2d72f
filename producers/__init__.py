"""Producers: normalise crawled documents, give them stable ids and push them into Kafka."""
