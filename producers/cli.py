"""What the file producers' command lines share: FILE arguments on top of the settings' flags, settings errors as
exit 2, and the run summary as one JSON line on stdout (for scripts) and one readable line on stderr."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from core.exceptions import SettingsError
from core.settings import LayeredSettings

S = TypeVar("S", bound=LayeredSettings)


def files_parser(prog: str, doc: str, settings: type[LayeredSettings], nargs: str) -> argparse.ArgumentParser:
    """The settings' flags and the positional FILE arguments (`nargs` "+" or "*"); the description is the first
    paragraph of the command's module docstring."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    help_ = settings.model_fields["files"].description
    parser.add_argument("files", nargs=nargs, metavar="FILE", default=argparse.SUPPRESS, help=help_)
    settings.add_flags(parser)
    return parser


def load_settings(settings: type[S], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> S | None:
    """The settings from flags, environment and file, with logging set up; None (reported) when they are invalid."""
    try:
        loaded = settings.from_args(parser.parse_args(argv))
    except (ValidationError, SettingsError) as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return loaded


def print_summary(summary: Any, line: str) -> None:
    """The summary dataclass as JSON on stdout, `line` for people on stderr."""
    print(orjson.dumps(asdict(summary)).decode())
    print(line, file=sys.stderr)
