"""Settings of every command: nested pydantic models, one flag, variable and TOML key per leaf field.

A command's settings are a tree of component models (the LLM client's, WebR's, Kafka's...), each declaring its
fields and defaults once. Outside the tree every leaf has one flat name: `--max-concurrency`, `WEBR_MAX_CONCURRENCY`
and `max_concurrency = 64` in the TOML file (flat, or inside the leaf's section, `[llm]`), so the names stay what
they were before the settings were split per component. A field renames itself, or reads further environment
variables (`OPENAI_API_KEY`), with `Annotated[..., Knob(...)]`.

Precedence: flags over environment over the TOML file over the field's default. This module is the only place
that reads the environment; components get validated, frozen models.
"""

from __future__ import annotations

import argparse
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.exceptions import SettingsError


@dataclass(frozen=True, slots=True)
class Knob:
    """How a field shows outside when not by its own name: `name` for its flag, variable and TOML key; `env` for
    variables read after the prefixed one (the first one set wins)."""

    name: str | None = None
    env: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Leaf:
    """One setting: where it sits in the tree, its outside name, its variables."""

    path: tuple[str, ...]
    name: str
    info: FieldInfo
    env: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def annotation(self) -> Any:
        return _unwrap_optional(self.info.annotation)

    @property
    def repeated(self) -> bool:
        """A list or tuple: a repeatable flag, a comma-separated variable, a TOML array."""
        return typing.get_origin(self.annotation) in (list, tuple)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _section_model(info: FieldInfo) -> type[BaseModel] | None:
    annotation = _unwrap_optional(info.annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def leaves(model: type[BaseModel], env_prefix: str = "WEBR_") -> list[Leaf]:
    """Every leaf field of `model`'s tree, in declaration order; names must be unique across the tree."""
    found: list[Leaf] = []

    def walk(m: type[BaseModel], path: tuple[str, ...]) -> None:
        for field_name, info in m.model_fields.items():
            section = _section_model(info)
            if section is not None:
                walk(section, (*path, field_name))
                continue
            knob = next((k for k in info.metadata if isinstance(k, Knob)), Knob())
            name = knob.name or field_name
            env = ((env_prefix + name).upper(), *knob.env)
            found.append(Leaf((*path, field_name), name, info, env))

    walk(model, ())
    seen: dict[str, Leaf] = {}
    for leaf in found:
        other = seen.setdefault(leaf.name, leaf)
        if other is not leaf:
            raise TypeError(
                f"{model.__name__}: {'.'.join(other.path)} and {'.'.join(leaf.path)} are both called {leaf.name!r}; "
                "rename one with Annotated[..., Knob(name=...)]"
            )
    return found


def sections(model: type[BaseModel]) -> set[tuple[str, ...]]:
    """The paths of the nested models (the TOML tables that may group leaves)."""
    return {leaf.path[:i] for leaf in leaves(model) for i in range(1, len(leaf.path))}


# -- command line ----------------------------------------------------------------------------------------------


def _help(leaf: Leaf) -> str:
    info = leaf.info
    text = info.description or leaf.name.replace("_", " ")
    if leaf.repeated:
        text += " (repeat the flag for several)"
    default = info.default
    if default not in (None, (), []) and not info.is_required() and not isinstance(default, SecretStr):
        # As the user would type it: a repeated leaf's values comma-separated, not as a Python tuple.
        shown = ", ".join(map(str, default)) if isinstance(default, tuple | list) else default
        text += f" (default: {shown})"
    return text


def add_model_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], *, skip: frozenset[str] = frozenset()
) -> None:
    """Add one `--kebab-case` flag per leaf of `model`'s tree. Flags default to "not given" (SUPPRESS), so only
    what the user typed reaches `LayeredSettings.load`, which layers it over the environment and the TOML file.
    Each section's flags are grouped under its name (the TOML table that may hold them)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for leaf in leaves(model):
        if leaf.name in skip:
            continue
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if len(leaf.path) > 1:
            section = leaf.path[0]
            if section not in groups:
                doc = (_section_model(model.model_fields[section]).__doc__ or "").strip().split(". ")[0].rstrip(".")
                groups[section] = parser.add_argument_group(f"[{section}]", f"{doc}." if doc else None)
            target = groups[section]
        kwargs: dict[str, Any] = {"dest": leaf.name, "default": argparse.SUPPRESS, "help": _help(leaf)}
        annotation = leaf.annotation
        if annotation is bool:
            target.add_argument(leaf.flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if leaf.repeated:
            kwargs["action"] = "append"
            args = typing.get_args(annotation)
            annotation = args[0] if args else str
        if typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(annotation)  # shown as {a,b,c}
        else:
            kwargs["metavar"] = leaf.name.upper()
            if annotation in (int, float):
                kwargs["type"] = annotation
        target.add_argument(leaf.flag, **kwargs)


# -- sources ---------------------------------------------------------------------------------------------------


class _EnvironmentSource(PydanticBaseSettingsSource):
    """Each leaf's variables, flat (`WEBR_SEED`, then its `Knob.env`); lists are comma separated."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # values are produced per leaf in __call__

    def __call__(self) -> dict[str, Any]:
        environ = {k.upper(): v for k, v in os.environ.items()}
        values: dict[str, Any] = {}
        prefix = str(self.settings_cls.model_config.get("env_prefix", ""))
        for leaf in leaves(self.settings_cls, prefix):
            raw = next((environ[name] for name in leaf.env if name in environ), None)
            if raw is None:
                continue
            values[leaf.name] = [v.strip() for v in raw.split(",") if v.strip()] if leaf.repeated else raw
        return values


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file: leaves by their flat name at the top or inside their section (`[llm]`, `[llm.sampling]`).
    A key that is no leaf of its table is passed on as `table.key`, for the model to refuse by name."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError

    def __call__(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as fh:
                table = tomllib.load(fh)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {self.path}: {exc}") from exc
        by_name = {leaf.name: leaf for leaf in leaves(self.settings_cls)}
        tables = sections(self.settings_cls)
        values: dict[str, Any] = {}

        def walk(t: Mapping[str, Any], where: tuple[str, ...]) -> None:
            for key, value in t.items():
                if isinstance(value, dict) and (*where, key) in tables:
                    walk(value, (*where, key))
                elif key in by_name and by_name[key].path[: len(where)] == where:
                    values[key] = value
                else:
                    values[".".join((*where, key))] = value

        walk(table, ())
        return values


_CONFIG_FILE: ContextVar[Path | None] = ContextVar("settings_config_file", default=None)


def nest(flat: Mapping[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """Put leaves given by flat name at their place in the tree; anything else stays where it is. A section given
    as a dict takes the flat leaves too (they win); a section given as a model instance is taken whole."""
    by_name = {leaf.name: leaf for leaf in leaves(model)}
    tree: dict[str, Any] = {k: v for k, v in flat.items() if k not in by_name or len(by_name[k].path) == 1}

    def place(path: tuple[str, ...], value: Any) -> None:
        node = tree
        for step in path[:-1]:
            child = node.get(step)
            if isinstance(child, BaseModel):
                return
            if not isinstance(child, dict):
                child = node[step] = {}
            node = child
        if value is not _SECTION:
            node[path[-1]] = value
        elif not isinstance(node.get(path[-1]), BaseModel | dict):
            node[path[-1]] = {}

    # Every section is validated, defaults and all, even when nothing in it was given.
    for section in sorted(sections(model), key=len):
        place(section, _SECTION)
    for key, value in flat.items():
        leaf = by_name.get(key)
        if leaf is not None and len(leaf.path) > 1:
            place(leaf.path, value)
    return tree


_SECTION = object()


class LayeredSettings(BaseSettings):
    """The root of a command's settings: flags > environment (`WEBR_<NAME>`) > TOML file > defaults.

    Construct with `load()` (what a command does) or directly with flat leaf names and/or sections."""

    model_config = SettingsConfigDict(
        env_prefix="WEBR_", extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )
    positional: ClassVar[frozenset[str]] = frozenset()
    """Leaves taken as positional arguments by the command, not as flags."""

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        return nest(data, cls) if isinstance(data, Mapping) else data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvironmentSource(settings_cls)]
        config = _CONFIG_FILE.get()
        if config is not None:
            sources.append(_TomlSource(settings_cls, config))
        return tuple(sources)

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """`--config` and one flag per leaf (`positional` ones excepted)."""
        parser.add_argument("--config", type=Path, default=None, help="TOML file with any of the settings below")
        add_model_flags(parser, cls, skip=cls.positional)

    @classmethod
    def load(cls, flags: Mapping[str, object], config_file: Path | None = None) -> Self:
        """Build from the flags given (flat leaf names), the environment and an optional TOML file."""
        if config_file is not None and not config_file.is_file():
            raise SettingsError(f"config file {config_file} does not exist")
        token = _CONFIG_FILE.set(config_file)
        try:
            return cls(**dict(flags))
        finally:
            _CONFIG_FILE.reset(token)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """Load from what a parser made by `add_flags` parsed."""
        given = dict(vars(args))
        config = given.pop("config", None)
        return cls.load(given, config)
