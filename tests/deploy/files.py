"""Reading what deploy/ holds: YAML documents, the kustomization's resources, compose interpolation, PromQL names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "webr-factory.json"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
_OUR_METRIC = re.compile(r"\bwebr_[a-zA-Z0-9_]+")


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_resources() -> list[dict[str, Any]]:
    """Every object the kustomization lists, in its order (no generators or patches are used)."""
    (kustomization,) = yaml_docs(K8S / "kustomization.yaml")
    return [doc for name in kustomization["resources"] for doc in yaml_docs(K8S / name)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def interpolate(value: str, secret: str = "test-secret") -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` with an empty environment; required
    variables get `secret`, as a user's deploy/.env would give them."""

    def one(m: re.Match[str]) -> str:
        op = m.group("op") or ""
        if op.endswith("-"):
            return m.group("arg")
        if op.endswith("?"):
            return secret
        return ""

    return _INTERPOLATION.sub(one, value).replace("$$", "$")


def required_variables(text: str) -> set[str]:
    """The variables compose refuses to start without (`${VAR:?message}`)."""
    return {m.group("name") for m in _INTERPOLATION.finditer(text) if m.group("op") == ":?"}


def compose_service(name: str) -> dict[str, Any]:
    """A service of compose.yaml with its YAML anchors merged and its environment interpolated."""
    (compose,) = yaml_docs(COMPOSE)
    service = dict(compose["services"][name])
    env = service.get("environment", {})
    service["environment"] = {key: interpolate(str(value)) for key, value in env.items()}
    return service


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    (rules,) = yaml_docs(ALERTS)
    return [rule for group in rules["groups"] for rule in group["rules"]]


def our_metric_names(exprs: list[str]) -> set[str]:
    """The `webr_*` series a set of PromQL expressions reads."""
    return {name for expr in exprs for name in _OUR_METRIC.findall(expr)}


def env_items(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in container.get("env", []):
        yield item["name"], item
