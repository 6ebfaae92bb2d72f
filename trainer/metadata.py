"""The record published with each model: what it was trained on, how, from which code."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import PipelineArgs

if TYPE_CHECKING:
    from trainer.sft import TrainOutcome
    from trainer.sft_config import WebrSFTConfig
    from trainer.workdir import Plan

log = logging.getLogger(__name__)

_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow")
_REPO = Path(__file__).resolve().parent.parent


def build_metadata(
    plan: Plan, pipeline: PipelineArgs, cfg: WebrSFTConfig, outcome: TrainOutcome, start_model: str
) -> dict[str, Any]:
    """Snapshot id and manifest, row counts and skips, data hash, hyperparameters, loss history, code revision."""
    tset = plan.training_set
    return {
        "run_id": plan.run_id,
        "planned_at": plan.created_at,
        "finished_at": datetime.now(UTC).isoformat(),
        "policy": plan.policy,
        "parent_run": plan.parent_run,
        "base_model": pipeline.base_model,
        "start_model": plan.start_model,
        "snapshot_id": plan.snapshot_id,
        "manifest": plan.manifest,
        "rows": {
            "snapshot": plan.manifest["rows"],
            "new_in_snapshot": plan.new_rows_in_manifest,
            "trained": tset["rows"],
            "heldout": tset.get("heldout_rows", 0),
            "from_new_files": tset["rows_from_new_files"],
            "from_old_files": tset["rows_from_old_files"],
            "skipped": tset["skipped"],
            "without_loss_tokens": outcome.rows_without_loss_tokens,
            "skipped_examples": tset["skipped_examples"],
        },
        "bad_files": tset["bad_files"],
        "data_sha256": tset["data_sha256"],
        "hyperparameters": {"sft": cfg.to_dict(), "training": cfg.training_fields(), "pipeline": asdict(pipeline)},
        "training": {k: v for k, v in asdict(outcome).items() if k != "log_history"},
        "loss_history": outcome.log_history,
        "code": code_revision(pipeline.code_revision),
    }


def code_revision(explicit: str | None) -> dict[str, Any]:
    """The git revision of this checkout (and whether it had local changes), plus the library versions."""
    info: dict[str, Any] = {"revision": explicit, "dirty": None, "python": platform.python_version()}
    if explicit is None:
        head = _git("rev-parse", "HEAD")
        info["revision"] = head
        if head is not None:
            info["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    info["packages"] = {name: _version(name) for name in _PACKAGES}
    return info


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
