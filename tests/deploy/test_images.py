"""The Dockerfiles: hadolint clean, and what the runtime relies on (non-root, tini as PID 1, the metrics port)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.kafka.settings import KafkaSettings
from tests.deploy.files import DOCKERFILES, ROOT
from tests.deploy.tools import tool

OCI_LABELS = ("title", "description", "version", "revision", "created", "source")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in logical]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"pipeline.Dockerfile", "trainer.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_flags_an_unpinned_base(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "DL3007" in done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_pinned_to_a_version(dockerfile: Path) -> None:
    args = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", dockerfile.read_text(encoding="utf-8"), re.MULTILINE))
    assert args, "the base image is a build argument with a default"
    for image in args.values():
        _, _, tag = image.partition(":")
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin an exact version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_as_non_root_under_tini(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    users = [args for name, args in stage if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (entrypoint,) = [args for name, args in stage if name == "ENTRYPOINT"]
    assert entrypoint.startswith('["tini"'), "exec form with tini as PID 1, so SIGTERM reaches Python"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_oci_labels(dockerfile: Path) -> None:
    labels = " ".join(args for name, args in final_stage(dockerfile) if name == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels


def test_pipeline_health_check_probes_the_consumers_metrics_port() -> None:
    stage = final_stage(ROOT / "deploy" / "docker" / "pipeline.Dockerfile")
    env = " ".join(args for name, args in stage if name == "ENV")
    port = int(re.search(r"WEBR_METRICS_PORT=(\d+)", env).group(1))
    assert "metrics_port" in KafkaSettings.model_fields  # read from WEBR_METRICS_PORT by streamer.consume
    assert ("EXPOSE", str(port)) in stage
    (check,) = [args for name, args in stage if name == "HEALTHCHECK"]
    assert "WEBR_METRICS_PORT" in check and "/metrics" in check


def test_context_keeps_secrets_and_virtualenvs_out() -> None:
    ignore = [line for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines() if line.strip()]
    rules = [line for line in ignore if not line.startswith("#")]
    assert rules[0] == "*", "deny everything, then allow exactly what the images copy"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for dockerfile in DOCKERFILES:
        for name, args in instructions(dockerfile):
            if name == "COPY" and "--from" not in args:
                copied.update(part.rstrip("/") for part in args.split()[:-1])
    assert copied == allowed


def copied_packages(path: Path) -> set[str]:
    return {args.split()[0].rstrip("/") for name, args in instructions(path) if name == "COPY" and "--from" not in args}


def imported_packages(module: str) -> set[str]:
    """Top-level packages of ours that `module` imports, transitively (run in a fresh interpreter)."""
    ours = ("core", "producers", "consumers", "streamer", "trainer", "devtools", "bench", "tests")
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(loaded.split()) & set(ours)


@pytest.mark.parametrize(
    ("image", "entry_points"),
    [
        ("pipeline", ["streamer.consume", "producers.files", "producers.crawl", "producers.http_ingest"]),
        ("trainer", ["trainer.run"]),
    ],
)
def test_each_image_copies_every_package_its_entry_points_import(image: str, entry_points: list[str]) -> None:
    (dockerfile,) = [d for d in DOCKERFILES if d.name.startswith(image)]
    needed = set().union(*(imported_packages(m) for m in entry_points))
    assert needed <= copied_packages(dockerfile), f"{dockerfile.name} misses {needed - copied_packages(dockerfile)}"
