"""yamllint over every YAML file in deploy/ with deploy/.yamllint.yaml."""

from __future__ import annotations

import subprocess

from tests.deploy.files import DEPLOY
from tests.deploy.tools import tool


def test_deploy_yaml_is_lint_clean() -> None:
    files = sorted(str(p) for p in DEPLOY.rglob("*.y*ml") if p.name != ".yamllint.yaml")
    assert len(files) >= 10
    done = subprocess.run(
        [tool("yamllint"), "--strict", "-c", str(DEPLOY / ".yamllint.yaml"), *files], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
