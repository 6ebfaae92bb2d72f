"""The local work dir: the lock, and at most one pending run (its frozen plan, training set and checkpoints).

    <work dir>/lock                       flock of the running job (see trainer.lock)
    <work dir>/pending/plan.json          written last: its presence means the plan below is complete
    <work dir>/pending/train.parquet      the frozen training set
    <work dir>/pending/checkpoints/       Trainer checkpoints, the newest resumed after a crash
    <work dir>/pending/final/             the trained model, complete once its training_metadata.json parses
    <work dir>/models/<run id>/           a published model downloaded from object storage (policy continue)

A killed run leaves `pending/`; the next run resumes it (with the snapshot it froze, even if newer data has
arrived since) when its settings still match, and starts over otherwise. A successful publish removes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.config import PipelineArgs
from trainer.store import METADATA

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """A run decided and frozen: which snapshot, which rows, from which model, with which settings."""

    run_id: str
    fingerprint: str
    created_at: str
    policy: str
    parent_run: str | None
    start_model: str
    manifest: dict[str, Any]
    new_rows_in_manifest: int
    training_set: dict[str, Any]

    @property
    def snapshot_id(self) -> str:
        return str(self.manifest["snapshot_id"])


def write_json(path: Path, data: object) -> None:
    """`data` as JSON at `path`, whole or not at all: the files that decide the work dir's state (the plan, the
    model's metadata) must never be seen half written by the run after a kill or a power loss."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fingerprint(pipeline: PipelineArgs, training: dict[str, object]) -> str:
    """Hash of every setting that changes what a run trains; a resume needs the same one."""
    decisive = {
        "data": pipeline.data,
        "base_model": pipeline.base_model,
        "output_dir": pipeline.output_dir,
        "policy": pipeline.policy,
        "replay_ratio": pipeline.replay_ratio,
        "model_dtype": pipeline.model_dtype,
        "lora": pipeline.lora_settings(),
        "holdout": (pipeline.eval_holdout_fraction, pipeline.eval_max_rows) if pipeline.eval_gate else None,
        "training": training,
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()


class WorkDir:
    """Paths and the pending run's life cycle inside the work dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = root / "lock"
        self.pending = root / "pending"
        self.plan_file = self.pending / "plan.json"
        self.train_file = self.pending / "train.parquet"
        self.heldout_file = self.pending / "heldout.parquet"
        self.checkpoints = self.pending / "checkpoints"
        self.final = self.pending / "final"
        self.models = root / "models"
        self.rejected = root / "rejected"

    def load_plan(self) -> Plan | None:
        if not self.plan_file.is_file():
            return None
        try:
            return Plan(**json.loads(self.plan_file.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("unreadable pending plan %s (%s): starting over", self.plan_file, exc)
            return None

    def save_plan(self, plan: Plan) -> None:
        write_json(self.plan_file, asdict(plan))

    def fresh_pending(self) -> None:
        """An empty pending dir, for a new plan."""
        shutil.rmtree(self.pending, ignore_errors=True)
        self.pending.mkdir(parents=True)

    def discard_pending(self, why: str) -> None:
        if self.pending.exists():
            log.warning("discarding the pending run in %s: %s", self.pending, why)
            shutil.rmtree(self.pending, ignore_errors=True)

    def final_complete(self) -> bool:
        """The trained model is whole: its config and a metadata file that parses (written last, atomically; a
        metadata file that does not parse was left by an older writer killed mid-write, and training is redone)."""
        if not (self.final / "config.json").is_file():
            return False
        try:
            json.loads((self.final / METADATA).read_text())
        except (OSError, ValueError):
            return False
        return True

    def clear_pending(self) -> None:
        shutil.rmtree(self.pending, ignore_errors=True)
        shutil.rmtree(self.models, ignore_errors=True)

    def keep_rejected(self, run_id: str) -> Path:
        """Move a candidate the evaluation gate refused (model, metadata, plan) out of the way, for inspection."""
        dest = self.rejected / run_id
        shutil.rmtree(dest, ignore_errors=True)
        self.rejected.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.plan_file, self.final / "plan.json")
        os.replace(self.final, dest)
        return dest

    def rejected_run(self, snapshot_id: str, fp: str) -> str | None:
        """The id of a rejected run of this snapshot with these settings: training it again would be wasted."""
        for plan_file in sorted(self.rejected.glob("*/plan.json")):
            try:
                plan = json.loads(plan_file.read_text())
            except (OSError, ValueError):
                continue
            if plan.get("manifest", {}).get("snapshot_id") == snapshot_id and plan.get("fingerprint") == fp:
                return str(plan["run_id"])
        return None
