"""deploy/compose.yaml: valid against the Compose specification, and wired to flags and files that exist."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import check_jsonschema
import jsonschema
import pytest

from producers.files import make_parser as producer_parser
from tests.deploy.files import COMPOSE, DEPLOY, compose_service, interpolate, required_variables, yaml_docs
from tests.deploy.grace import worst_stop_s
from tests.deploy.settings_env import settings_from, unknown_variables

# The Compose specification's JSON schema (Apache-2.0, compose-spec/compose-spec) as vendored by check-jsonschema.
COMPOSE_SCHEMA = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"


def compose_errors(document: dict) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification() -> None:
    (document,) = yaml_docs(COMPOSE)
    assert compose_errors(document) == []


def test_schema_refuses_a_misspelt_service_key() -> None:
    (document,) = yaml_docs(COMPOSE)
    document["services"]["consumer"]["enviroment"] = {"A": "1"}
    assert any("enviroment" in error for error in compose_errors(document))


def test_whole_system_is_there() -> None:
    (document,) = yaml_docs(COMPOSE)
    services = document["services"]
    assert {
        "kafka",
        "minio",
        "minio-init",
        "consumer",
        "producer",
        "vllm",
        "trainer",
        "kafka-exporter",
        "prometheus",
        "grafana",
    } <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["vllm"]["profiles"] == ["gpu"]
    # `--scale consumer=N` needs a service without a fixed container name or host port.
    assert "container_name" not in services["consumer"] and "ports" not in services["consumer"]


def test_consumer_environment_is_a_valid_kafka_run(monkeypatch: pytest.MonkeyPatch) -> None:
    env = compose_service("consumer")["environment"]
    assert unknown_variables(env) == set()
    settings = settings_from({**env, "OPENAI_API_KEY": "sk-from-deploy-env"}, monkeypatch)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.sink.output.startswith("s3://")
    assert settings.kafka.metrics_port == 9108
    assert settings.llm.api_key.get_secret_value() == "sk-from-deploy-env"


def test_a_misspelt_setting_is_caught() -> None:
    assert unknown_variables({"WEBR_GRUOP_ID": "webr", "WEBR_GROUP_ID": "webr"}) == {"WEBR_GRUOP_ID"}


def test_consumer_stop_grace_covers_the_runtimes_bounded_stop() -> None:
    service = compose_service("consumer")
    grace = float(service["environment"]["WEBR_GRACE_PERIOD_S"])
    stop = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"]).group(1))
    assert stop >= worst_stop_s(grace)


def test_producer_command_is_the_real_cli() -> None:
    service = compose_service("producer")
    entry = [interpolate(part) for part in service["entrypoint"]]
    assert entry[:5] == ["tini", "--", "python", "-m", "producers.files"]
    args = producer_parser().parse_args(entry[5:] + service["command"])
    assert isinstance(args, argparse.Namespace)
    assert args.topic == compose_service("consumer")["environment"]["WEBR_TOPIC"]


def test_mounted_files_exist() -> None:
    (document,) = yaml_docs(COMPOSE)
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            source = interpolate(volume.split(":")[0])
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_no_secret_value_is_written_in_the_file() -> None:
    (document,) = yaml_docs(COMPOSE)
    for name, service in document["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"KEY|PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"{name}.{key} must come from the environment"


def gpus(service: str) -> list[str]:
    """The GPU indexes a service reserves, with the defaults of its variables; a `count` reservation fails."""
    (device,) = compose_service(service)["deploy"]["resources"]["reservations"]["devices"]
    assert "count" not in device, f"{service} reserves GPUs by count: it may take the other service's GPU"
    return [interpolate(i) for i in device["device_ids"]]


def test_vllm_and_the_trainer_never_share_a_gpu_unless_told() -> None:
    """vLLM reserves most of its GPU's memory at start: a trainer on the same GPU runs out of memory."""
    assert set(gpus("vllm")).isdisjoint(gpus("trainer"))
    command = [interpolate(part) for part in compose_service("vllm")["command"]]
    share = float(command[command.index("--gpu-memory-utilization") + 1])
    assert 0 < share <= 1
    assert "VLLM_GPU_MEMORY_UTILIZATION" in " ".join(compose_service("vllm")["command"])


def test_every_required_variable_is_named_in_the_header_and_the_env_example() -> None:
    """A `${VAR:?...}` left unset stops `docker compose up`: the setup steps must name each one."""
    text = COMPOSE.read_text(encoding="utf-8")
    required = required_variables(text)
    header = text.split("\nname:", 1)[0]
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    assert required >= {"MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    assert {name for name in required if name not in header} == set()
    assert {name for name in required if not re.search(rf"^{name}=", example, re.M)} == set()
