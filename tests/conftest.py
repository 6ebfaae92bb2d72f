"""Shared fixtures live in tests/fixtures/ as plugins, one module per real service."""

pytest_plugins: list[str] = [
    "tests.fixtures.s3",
    "tests.fixtures.kafka",
    "tests.fixtures.vllm_server",
    "tests.fixtures.llm_server",
]
