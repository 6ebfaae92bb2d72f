"""The dashboard and the alert rules read only metrics the code exports, and the rules behave as documented."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumers.llm.client import ClientStats
from streamer.metrics import ConsumerMetrics, LLMStatsCollector
from tests.deploy.files import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    alert_rules,
    compose_service,
    dashboard_exprs,
    k8s_object,
    our_metric_names,
    yaml_docs,
)

SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}

# What the issue asks the dashboard to show, as the series that show it.
DASHBOARD_MUST_SHOW = {
    "webr_documents_in_total",
    "webr_documents_out_total",
    "webr_rejected_total",
    "webr_llm_calls_total",
    "webr_llm_rate_limited_total",
    "webr_llm_tokens_total",
    "webr_llm_cost_usd_total",
    "webr_consumer_lag",
    "webr_documents_in_flight",
    "webr_llm_endpoint_down",
    "webr_files_written_total",
}


def exported_series() -> set[str]:
    """Every series name a consumer's /metrics can carry: its registry plus the LLM client's collector."""
    registry = CollectorRegistry()
    ConsumerMetrics(registry)
    registry.register(LLMStatsCollector(ClientStats()))
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return names


def test_dashboard_reads_only_exported_metrics() -> None:
    used = our_metric_names(dashboard_exprs())
    assert used - exported_series() == set()
    assert used >= DASHBOARD_MUST_SHOW


def test_alert_rules_read_only_exported_metrics() -> None:
    used = our_metric_names([rule["expr"] for rule in alert_rules()])
    assert {"webr_llm_endpoint_down", "webr_files_written_total", "webr_llm_rate_limited_total"} <= used
    assert used - exported_series() == set()


def test_a_misspelt_metric_is_caught() -> None:
    used = our_metric_names(["sum(rate(webr_document_in_total[5m])) / sum(webr_llm_attempts_total)"])
    assert used - exported_series() == {"webr_document_in_total"}


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_every_alert_has_a_runbook_entry() -> None:
    runbook = (DEPLOY.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in runbook, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary; `make install` installs it (Debian package `prometheus`), so a missing one fails."""
    path = shutil.which("promtool")
    assert path, "promtool is missing: run `make install-tools` (Debian package `prometheus`)"
    return path


def test_promtool_accepts_the_rules_and_their_unit_tests_pass(promtool: str) -> None:
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yaml"], cwd=ALERTS.parent, capture_output=True, text=True
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    exprs = [e.replace("$__rate_interval", "5m").replace("$group", ".*") for e in dashboard_exprs()]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_scrapes_the_consumers_where_they_serve() -> None:
    (config,) = yaml_docs(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (consumers,) = jobs["webr-consumer"]["dns_sd_configs"]
    assert consumers["names"] == ["consumer"]
    assert consumers["port"] == int(compose_service("consumer")["environment"]["WEBR_METRICS_PORT"])
    assert any('job="webr-consumer"' in rule["expr"] for rule in alert_rules())
    mounted = {v.split(":")[1]: v.split(":")[0] for v in compose_service("prometheus")["volumes"]}
    for rule_file in config["rule_files"]:
        assert (DEPLOY / mounted[rule_file]).resolve() == ALERTS.resolve()


def test_consumer_pods_announce_their_metrics_port() -> None:
    port = k8s_object("ConfigMap", "webr-consumer-settings")["data"]["WEBR_METRICS_PORT"]
    template = k8s_object("Deployment", "webr-consumer")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == port
    assert k8s_object("Service", "webr-consumer-metrics")["spec"]["ports"][0]["port"] == int(port)
