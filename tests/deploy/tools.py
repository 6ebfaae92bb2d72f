"""The linters the dev extra installs, found next to the running interpreter (a virtualenv's bin/)."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path


def tool(name: str) -> str:
    """Path of a console script of this environment; a missing one is an install error, never a skip."""
    local = Path(sysconfig.get_path("scripts")) / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: `pip install -e .[dev]` installs it")
    return found
