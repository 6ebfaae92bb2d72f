"""Contracts every package shares: documents, outcomes, errors, storage, the output schema and keys."""
