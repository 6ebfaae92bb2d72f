"""LLM client for OpenAI and vLLM OpenAI-compatible servers: limits, retries, error classes."""
