"""Logging set-up: one JSON object per line (for log shippers) or plain text (for people at a terminal).

Structured fields travel as `extra={...}` on a log call and become top-level keys of the JSON object, so a
dashboard can filter on `partition` or `offset` without parsing messages.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra fields, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def setup_logging(level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> None:
    """Configure the root logger once (replacing earlier handlers); quiet the chattiest libraries."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if root.level > logging.DEBUG:
        # kafka-python narrates every connection and rebalance step, httpx every request, at INFO.
        for chatty in ("kafka", "httpx", "httpx2", "openai"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
