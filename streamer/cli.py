"""Command-line flags generated from a settings model, so a flag, its type, default and help are declared once.

Flags default to "not given" (argparse.SUPPRESS): only what the user typed reaches the model, which then layers
flags over environment over the TOML file.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _help(name: str, info: FieldInfo) -> str:
    text = info.description or name.replace("_", " ")
    if info.default is not None and not info.is_required() and not isinstance(info.default, SecretStr):
        text += f" (default: {info.default})"
    return text


def add_model_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], *, skip: frozenset[str] = frozenset()
) -> None:
    """Add one `--kebab-case` flag per field of `model` (nested models are not flattened: keep settings flat)."""
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = _unwrap_optional(info.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(name, info)}
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        if typing.get_origin(annotation) in (list, tuple):
            kwargs["action"] = "append"  # repeated flags make a list
        elif typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(annotation)
        elif annotation in (int, float):
            kwargs["type"] = annotation
        parser.add_argument(flag, metavar=name.upper(), **kwargs)
