"""The settings layer: every leaf of the consume settings is reachable by flag, variable and TOML key, lists
repeat, names stay unique, and the layers keep their precedence."""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from core.settings import LayeredSettings, Leaf, leaves
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


def sample(leaf: Leaf) -> Any:
    """A valid value of the leaf that is not its default."""
    annotation, default = leaf.annotation, leaf.info.default
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
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def reached(settings: ConsumeSettings, leaf: Leaf) -> Any:
    node: Any = settings
    for step in leaf.path:
        node = getattr(node, step)
    return shown(node)


def base_for(leaf: Leaf) -> dict[str, Any]:
    return KAFKA_BASE if leaf.name == "bootstrap_servers" else BASE


def argv_for(leaf: Leaf, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [leaf.flag if value else "--no-" + leaf.flag.removeprefix("--")]
    if isinstance(value, list):
        return [arg for v in value for arg in (leaf.flag, str(v))]
    return [leaf.flag, str(value)]


def env_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(value) if isinstance(value, list) else str(value)


def toml_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str | list) else repr(value)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for leaf in leaves(ConsumeSettings):
        for name in leaf.env:
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_consume_setting_has_a_flag_a_variable_and_a_toml_key(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    parser = make_parser()
    all_leaves = leaves(ConsumeSettings)
    assert len(all_leaves) > 50
    for leaf in all_leaves:
        value = sample(leaf)
        base = {k: v for k, v in base_for(leaf).items() if k != leaf.name}
        base_argv = [arg for k, v in base.items() for arg in ("--" + k.replace("_", "-"), v)]

        by_flag = ConsumeSettings.from_args(parser.parse_args(base_argv + argv_for(leaf, value)))
        assert reached(by_flag, leaf) == value, leaf.flag

        for name in leaf.env:
            with clean_env.context() as env:
                env.setenv(name, env_text(value))
                assert reached(ConsumeSettings.load(base), leaf) == value, name

        flat = tmp_path / f"{leaf.name}.toml"
        flat.write_text(f"{leaf.name} = {toml_text(value)}\n")
        assert reached(ConsumeSettings.load(base, flat), leaf) == value, f"TOML {leaf.name}"

        if len(leaf.path) > 1:
            sectioned = tmp_path / f"{leaf.name}-section.toml"
            sectioned.write_text(f"[{'.'.join(leaf.path[:-1])}]\n{leaf.name} = {toml_text(value)}\n")
            assert reached(ConsumeSettings.load(base, sectioned), leaf) == value, f"TOML [{leaf.path[:-1]}]"


def test_every_documented_knob_is_a_setting() -> None:
    names = {leaf.name for leaf in leaves(ConsumeSettings)}
    knobs = {"price_input_per_mtok", "price_cached_input_per_mtok", "price_output_per_mtok", "give_up_after"}
    assert knobs <= names
    assert {"s3_endpoint_url", "s3_region", "keep_whole_probability", "dedup_threshold"} <= names


def test_openai_variables_are_read_after_the_webr_ones(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-openai")
    clean_env.setenv("OPENAI_BASE_URL", "http://openai-var/v1")
    settings = ConsumeSettings.load({"source": "s", "output": "o"})
    assert (settings.llm.base_url, settings.llm.api_key.get_secret_value()) == ("http://openai-var/v1", "sk-openai")
    clean_env.setenv("WEBR_API_KEY", "sk-webr")
    clean_env.setenv("WEBR_BASE_URL", "http://webr-var/v1")
    settings = ConsumeSettings.load({"source": "s", "output": "o"})
    assert (settings.llm.base_url, settings.llm.api_key.get_secret_value()) == ("http://webr-var/v1", "sk-webr")


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
