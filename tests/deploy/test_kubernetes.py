"""deploy/k8s: every object valid for Kubernetes (strict schemas), KEDA's ScaledObject by its structure, and the
settings, grace periods and schedules consistent with the code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.files import K8S, env_items, k8s_object, k8s_resources
from tests.deploy.grace import worst_stop_s
from tests.deploy.settings_env import settings_from, unknown_variables
from trainer.exceptions import EXIT_DATA, EXIT_REJECTED, EXIT_UNEXPECTED, EXIT_USAGE
from trainer.run import parse_args

K8S_VERSION = "1.33"

# KEDA's ScaledObject is a custom resource kubernetes-validate has no schema for: the fields used here, as KEDA's
# CRD (keda.sh/v1alpha1) declares them. Trigger metadata is a map of strings there: a bare number is refused.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        k: {"type": "string"} for k in ("apiVersion", "kind", "name", "envSourceContainerName")
                    },
                },
                **{
                    k: {"type": "integer", "minimum": 0}
                    for k in (
                        "pollingInterval",
                        "cooldownPeriod",
                        "initialCooldownPeriod",
                        "idleReplicaCount",
                        "minReplicaCount",
                        "maxReplicaCount",
                    )
                },
                "advanced": {"type": "object"},
                "fallback": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        },
                    },
                },
            },
        },
    },
}
KAFKA_TRIGGER_REQUIRED = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}


def is_custom(resource: dict[str, Any]) -> bool:
    return resource["apiVersion"].startswith("keda.sh/")


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize(
    "resource", [r for r in k8s_resources() if not is_custom(r)], ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_object_is_valid_for_kubernetes(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    deployment = k8s_object("Deployment", "webr-consumer")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_scaled_object_structure() -> None:
    scaled = k8s_object("ScaledObject", "webr-consumer")
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    assert scaled["spec"]["scaleTargetRef"]["name"] == k8s_object("Deployment", "webr-consumer")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert set(trigger["metadata"]) >= KAFKA_TRIGGER_REQUIRED


def test_scaled_object_schema_refuses_a_numeric_threshold() -> None:
    scaled = k8s_object("ScaledObject", "webr-consumer")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 500
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


def test_scaler_watches_the_group_and_topic_the_consumers_use() -> None:
    settings = k8s_object("ConfigMap", "webr-consumer-settings")["data"]
    (trigger,) = k8s_object("ScaledObject", "webr-consumer")["spec"]["triggers"]
    assert trigger["metadata"]["bootstrapServers"] == settings["WEBR_BOOTSTRAP_SERVERS"]
    assert trigger["metadata"]["consumerGroup"] == settings["WEBR_GROUP_ID"]
    assert trigger["metadata"]["topic"] == settings["WEBR_TOPIC"]


def test_consumer_settings_are_a_valid_kafka_run(monkeypatch: pytest.MonkeyPatch) -> None:
    data = k8s_object("ConfigMap", "webr-consumer-settings")["data"]
    (container,) = k8s_object("Deployment", "webr-consumer")["spec"]["template"]["spec"]["containers"]
    env = {**data, **{name: "from-the-pod" for name, _ in env_items(container)}}
    assert unknown_variables(env) == set()
    settings = settings_from(env, monkeypatch)
    assert settings.llm.base_urls == ("http://vllm:8000/v1",)
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert settings.kafka.metrics_port == port


def test_termination_grace_covers_the_runtimes_bounded_stop() -> None:
    grace = float(k8s_object("ConfigMap", "webr-consumer-settings")["data"]["WEBR_GRACE_PERIOD_S"])
    pod = k8s_object("Deployment", "webr-consumer")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= worst_stop_s(grace)


def test_consumers_and_vllm_have_budgets_and_limits() -> None:
    for name in ("webr-consumer", "vllm"):
        pdb = k8s_object("PodDisruptionBudget", name)
        labels = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for resource in k8s_resources():
        pod = pod_spec(resource)
        for container in pod.get("containers", []) if pod else []:
            assert {"requests", "limits"} <= set(container["resources"]), f"{resource['metadata']['name']}"
            assert "memory" in container["resources"]["limits"]


def test_gpu_workloads_ask_for_a_gpu() -> None:
    for kind, name in (("Deployment", "vllm"), ("CronJob", "webr-trainer")):
        (container,) = pod_spec(k8s_object(kind, name))["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_trainer_cronjob_never_overlaps_and_fails_fast_on_hopeless_exits() -> None:
    """A refusal by the evaluation gate (6) must fail the Job: its retry would say nothing_to_do, exit 0, and the
    Job would show as succeeded."""
    spec = k8s_object("CronJob", "webr-trainer")["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    rules = spec["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    fail_now = {code for rule in rules if rule["action"] == "FailJob" for code in rule["onExitCodes"]["values"]}
    assert {EXIT_UNEXPECTED, EXIT_USAGE, EXIT_DATA, EXIT_REJECTED} == fail_now


def test_trainer_settings_parse_with_the_trainers_own_parser(tmp_path: Path) -> None:
    config = tmp_path / "trainer.yaml"
    config.write_text(k8s_object("ConfigMap", "webr-trainer-settings")["data"]["trainer.yaml"])
    pipeline, _ = parse_args(["--config", str(config)])
    (container,) = pod_spec(k8s_object("CronJob", "webr-trainer"))["containers"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert pipeline.work_dir in mounts
    assert any(pipeline.base_model.startswith(m) for m in mounts)


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    kind = resource["kind"]
    if kind in ("Deployment", "Job"):
        return resource["spec"]["template"]["spec"]
    if kind == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def test_kubectl_kustomize_renders_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: run `make install-tools` (Debian package `kubectl`)"
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True).stdout
    objects = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered) if d}
    assert objects == {(d["kind"], d["metadata"]["name"]) for d in k8s_resources()}


def test_autoscaled_deployment_leaves_the_replica_count_to_keda() -> None:
    target = k8s_object("ScaledObject", "webr-consumer")["spec"]["scaleTargetRef"]["name"]
    assert "replicas" not in k8s_object("Deployment", target)["spec"]
