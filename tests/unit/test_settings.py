"""The settings layer: every leaf of the consume settings is reachable by flag, variable and TOML key, lists
repeat, names stay unique, and the layers keep their precedence."""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from core.settings import LayeredSettings, Leaf, leaves
from producers.crawl import make_parser as crawl_parser
from producers.files import make_parser as files_parser
from producers.http_ingest import make_parser as ingest_parser
from producers.settings import CrawlSettings, FilesSettings, HttpIngestSettings
from streamer.consume import make_parser
from streamer.settings import ConsumeSettings

BASE = {"source": "pages.jsonl", "output": "out", "base_url": "http://vllm:8000/v1"}
KAFKA_BASE = {"output": "out", "topic": "pages", "base_url": "http://vllm:8000/v1"}


def _bounds(leaf: Leaf) -> tuple[float | None, float | None]:
    low = high = None
    for m in leaf.info.metadata:
        if isinstance(m, annotated_types.Ge):
            low = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Gt):
            low = float(m.gt) + (1 if leaf.annotation is int else 0.01)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Le):
            high = float(m.le)  # type: ignore[arg-type]
    return low, high


def sample(leaf: Leaf, files: Path) -> Any:
    """A valid value of the leaf that is not its default (a file that exists, for settings that name one)."""
    annotation, default = leaf.annotation, leaf.info.default
    if annotation is Path:
        path = files / f"{leaf.name}.json"
        path.write_text('{"my-model": {"input": 1.0, "output": 2.0}}')  # the one such setting: a price table
        return path
    if annotation is bool:
        return not default
    if typing.get_origin(annotation) is typing.Literal:
        return next(c for c in typing.get_args(annotation) if c != default)
    if annotation in (int, float):
        low, high = _bounds(leaf)
        value = (default if isinstance(default, int | float) else (low or 1)) + 1
        if high is not None and value > high:
            value = (low + high) / 2 if low is not None else high / 2
        return annotation(value)
    if leaf.repeated:
        return ["first", "second"]
    return f"given-{leaf.name}"


def shown(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [shown(v) for v in value]
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def reached(settings: ConsumeSettings, leaf: Leaf) -> Any:
    node: Any = settings
    for step in leaf.path:
        node = getattr(node, step)
    return shown(node)


@dataclass(frozen=True)
class Command:
    """A command's settings model, its parser, and the least it needs (per leaf under test: what else it needs)."""

    model: type[LayeredSettings]
    parser: Callable[[], argparse.ArgumentParser]
    base: dict[str, Any]
    instead: dict[str, dict[str, Any]] = field(default_factory=dict)

    def base_for(self, leaf: Leaf) -> dict[str, Any]:
        return {k: v for k, v in self.instead.get(leaf.name, self.base).items() if k != leaf.name}

    def argv(self, given: dict[str, Any]) -> list[str]:
        args: list[str] = []
        for name, value in given.items():
            if name in self.model.positional:
                args += value
            elif isinstance(value, bool):
                args.append(("--" if value else "--no-") + name.replace("_", "-"))
            else:
                args += [a for v in (value if isinstance(value, list) else [value]) for a in (_flag(name), str(v))]
        return args


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


PRODUCER = {"bootstrap_servers": "kafka:9092", "topic": "pages"}
COMMANDS = {
    "streamer.consume": Command(ConsumeSettings, make_parser, BASE, {"bootstrap_servers": KAFKA_BASE}),
    "producers.files": Command(FilesSettings, files_parser, {**PRODUCER, "files": ["pages.jsonl"]}),
    "producers.crawl": Command(
        CrawlSettings,
        crawl_parser,
        {**PRODUCER, "files": ["a.warc.gz"], "state_dir": "state"},
        {"watch": {**PRODUCER, "state_dir": "state"}},
    ),
    "producers.http_ingest": Command(HttpIngestSettings, ingest_parser, {**PRODUCER, "ingest_tokens": ["t"]}),
}


def env_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(value) if isinstance(value, list) else str(value)


def toml_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value) if isinstance(value, str | list) else repr(value)


def clear(monkeypatch: pytest.MonkeyPatch, model: type[LayeredSettings]) -> None:
    for leaf in leaves(model):
        for name in leaf.env:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    clear(monkeypatch, ConsumeSettings)
    return monkeypatch


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_setting_has_a_flag_a_variable_and_a_toml_key(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = COMMANDS[name]
    clear(monkeypatch, command.model)
    parser = command.parser()
    for leaf in leaves(command.model):
        value = sample(leaf, tmp_path)
        base = command.base_for(leaf)

        by_flag = command.model.from_args(parser.parse_args(command.argv({**base, leaf.name: value})))
        assert reached(by_flag, leaf) == value, leaf.flag

        for variable in leaf.env:
            with monkeypatch.context() as env:
                env.setenv(variable, env_text(value))
                assert reached(command.model.load(base), leaf) == value, variable

        flat = tmp_path / f"{leaf.name}.toml"
        flat.write_text(f"{leaf.name} = {toml_text(value)}\n")
        assert reached(command.model.load(base, flat), leaf) == value, f"TOML {leaf.name}"

        if len(leaf.path) > 1:
            sectioned = tmp_path / f"{leaf.name}-section.toml"
            sectioned.write_text(f"[{'.'.join(leaf.path[:-1])}]\n{leaf.name} = {toml_text(value)}\n")
            assert reached(command.model.load(base, sectioned), leaf) == value, f"TOML [{leaf.path[:-1]}]"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_states_each_default_once_and_as_it_is_typed(name: str) -> None:
    helps = {a.option_strings[0]: a.help or "" for a in COMMANDS[name].parser()._actions if a.option_strings}
    for flag, text in helps.items():
        assert text.count("default:") <= 1, flag
        assert "(default: (" not in text and "(default: [" not in text, flag
    if "--base-url" in helps:
        assert helps["--base-url"].endswith("(default: https://api.openai.com/v1)")


def test_the_consume_settings_are_the_components_own() -> None:
    sections = {leaf.path[0] for leaf in leaves(ConsumeSettings)}
    assert sections == {"run", "sink", "storage", "llm", "webr", "kafka"}
    assert len(leaves(ConsumeSettings)) > 50


def test_every_documented_knob_is_a_setting() -> None:
    names = {leaf.name for leaf in leaves(ConsumeSettings)}
    knobs = {"price_input_per_mtok", "price_cached_input_per_mtok", "price_output_per_mtok", "give_up_after"}
    assert knobs <= names
    assert {"s3_endpoint_url", "s3_region", "keep_whole_probability", "dedup_threshold"} <= names


def test_openai_variables_are_read_after_the_webr_ones(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-openai")
    clean_env.setenv("OPENAI_BASE_URL", "http://openai-var/v1")
    settings = ConsumeSettings.load({"source": "s", "output": "o"})
    assert (settings.llm.base_urls[0], settings.llm.api_key.get_secret_value()) == ("http://openai-var/v1", "sk-openai")
    clean_env.setenv("WEBR_API_KEY", "sk-webr")
    clean_env.setenv("WEBR_BASE_URL", "http://webr-var/v1")
    settings = ConsumeSettings.load({"source": "s", "output": "o"})
    assert (settings.llm.base_urls[0], settings.llm.api_key.get_secret_value()) == ("http://webr-var/v1", "sk-webr")


def test_sampling_given_overrides_the_backends_reference(clean_env: pytest.MonkeyPatch) -> None:
    vllm = ConsumeSettings.load(BASE | {"top_p": 0.5}).llm.sampling
    assert (vllm.temperature, vllm.top_p, vllm.max_tokens) == (0.6, 0.5, 4096)
    openai = ConsumeSettings.load(BASE | {"backend": "openai", "max_tokens": 100}).llm.sampling
    assert (openai.temperature, openai.top_p, openai.max_tokens) == (1.0, None, 100)


def test_a_toml_key_in_the_wrong_section_or_misspelt_is_refused_by_name(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[kafka]\nmodel = 'm'\n")
    with pytest.raises(ValidationError, match=r"kafka\.model"):
        ConsumeSettings.load(BASE, config)
    config.write_text("[llm]\nmodle = 'm'\n")
    with pytest.raises(ValidationError, match=r"llm\.modle"):
        ConsumeSettings.load(BASE, config)


class Hosts(BaseModel):
    urls: list[str] = []
    weights: tuple[int, ...] = ()


class WithLists(LayeredSettings):
    hosts: Hosts


def test_list_settings_repeat_as_flags_split_on_commas_and_are_toml_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    WithLists.add_flags(parser)
    args = parser.parse_args(["--urls", "http://a/v1", "--urls", "http://b/v1", "--weights", "2"])
    by_flags = WithLists.from_args(args)
    assert (by_flags.hosts.urls, by_flags.hosts.weights) == (["http://a/v1", "http://b/v1"], (2,))

    monkeypatch.setenv("WEBR_URLS", "http://a/v1, http://b/v1")
    monkeypatch.setenv("WEBR_WEIGHTS", "1,3")
    by_env = WithLists.load({})
    assert (by_env.hosts.urls, by_env.hosts.weights) == (["http://a/v1", "http://b/v1"], (1, 3))

    config = tmp_path / "c.toml"
    config.write_text('[hosts]\nurls = ["http://c/v1"]\n')
    monkeypatch.delenv("WEBR_URLS")
    assert WithLists.load({}, config).hosts.urls == ["http://c/v1"]


class Twice(BaseModel):
    seed: int = 0


class Clash(LayeredSettings):
    a: Twice
    b: Twice


def test_two_settings_with_one_name_are_refused() -> None:
    with pytest.raises(TypeError, match="both called 'seed'"):
        leaves(Clash)
