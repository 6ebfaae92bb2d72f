"""Tests of the LLM client, its limiter and error classes, and of the fake OpenAI server they run against."""
