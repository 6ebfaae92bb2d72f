"""An in-repo OpenAI-compatible test server (aiohttp) with fault injection and per-second rate limits."""

from devtools.fakeopenai.faults import REFUSAL_TEXT, Fault, FaultKind
from devtools.fakeopenai.server import FakeOpenAI, Record, SecondStats, ServerConfig, ServerStats

__all__ = [
    "REFUSAL_TEXT",
    "FakeOpenAI",
    "Fault",
    "FaultKind",
    "Record",
    "SecondStats",
    "ServerConfig",
    "ServerStats",
]
