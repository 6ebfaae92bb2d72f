"""Shared fixtures live in tests/fixtures/ as plugins, one module per real service."""

pytest_plugins: list[str] = ["tests.fixtures.vllm_server"]
