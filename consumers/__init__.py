"""The WebR engine: a per-document state machine and the LLM client it calls."""
