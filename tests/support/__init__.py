"""Helpers shared by tests and by other test-only code (e.g. the trainer's tests)."""
