"""Pipeline options of the trainer: what to train on, where to publish, and how runs follow each other.

The SFT hyperparameters live in `trainer.sft_config.WebrSFTConfig` (an `SFTConfig`, heavy to import); these are
the options of the job around it, frozen and validated as soon as they are parsed. Both are parsed by one
`HfArgumentParser` (see `trainer.run.make_parser`), so every field is also a `--flag` and a YAML key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from core.settings import Knob, LayeredSettings
from core.storage import StorageSettings
from trainer.exceptions import TrainerConfigError

Policy = Literal["retrain", "continue"]
ModelDtype = Literal["auto", "float32", "bfloat16"]


@dataclass(frozen=True)
class PipelineArgs:
    """Options of the job: data, model, output, incremental policy, LoRA. Invalid values are refused here."""

    data: str = field(metadata={"help": "Root of the Parquet dataset written by streamer.consume (path or s3://)."})
    base_model: str = field(metadata={"help": "Model to fine-tune: a local directory or a hub id."})
    output_dir: str = field(
        metadata={"help": "Where models are published (path or s3://): <run id>/ directories and a `latest` pointer."}
    )
    s3_endpoint_url: str | None = field(
        default=None, metadata={"help": "Endpoint of an S3-compatible store (MinIO, Ceph) for s3:// URIs."}
    )
    work_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory for the lock, the frozen training set and checkpoints (resumed after a crash), on a "
            "local disk; several nodes need one shared directory at the same path on each (docs/trainer.md). "
            "Default: $XDG_CACHE_HOME/webr-factory/trainer/<hash of --output-dir>."
        },
    )
    min_new_rows: int = field(
        default=1, metadata={"help": "Train only when at least this many rows are new since the last trained snapshot."}
    )
    policy: Policy = field(
        default="retrain",
        metadata={
            "help": "retrain: the base model on all data (the paper's recipe). continue: the latest published model "
            "on the new rows plus a replay sample of older rows."
        },
    )
    replay_ratio: float = field(
        default=0.5, metadata={"help": "With --policy continue: replayed old rows per new row (0 disables replay)."}
    )
    model_dtype: ModelDtype = field(
        default="auto",
        metadata={"help": "dtype the weights are loaded in; auto = float32 (mixed precision keeps fp32 masters)."},
    )
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft), merged before publishing."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules LoRA adapts (peft names)."}
    )
    skip_bad_files: bool = field(
        default=False,
        metadata={"help": "Skip unreadable Parquet files (listed in the metadata) instead of failing the run."},
    )
    eval_gate: bool = field(
        default=True,
        metadata={
            "help": "Promote a candidate only if it is not worse than the model it replaces (the latest, else the "
            "base model) on held-out rows; a rejected candidate is kept in the work dir, exit code 6."
        },
    )
    eval_holdout_fraction: float = field(
        default=0.05, metadata={"help": "Share of documents held out of training for the gate (by id hash)."}
    )
    eval_max_rows: int = field(default=200, metadata={"help": "At most this many held-out rows."})
    eval_max_loss_increase: float = field(
        default=0.02, metadata={"help": "Refuse a candidate whose held-out loss is higher by more than this share."}
    )
    eval_instructions: bool = field(
        default=False,
        metadata={"help": "Also score the shipped instruction-following prompts by generation (slower)."},
    )
    eval_max_instruction_drop: float = field(
        default=0.1, metadata={"help": "Refuse a candidate whose instruction score is lower by more than this."}
    )
    eval_max_new_tokens: int = field(default=192, metadata={"help": "Tokens generated per instruction prompt."})
    code_revision: str | None = field(
        default=None, metadata={"help": "Revision recorded in the metadata; default: `git rev-parse HEAD` if any."}
    )

    def __post_init__(self) -> None:
        for name in ("data", "base_model", "output_dir"):
            if not str(getattr(self, name)).strip():
                raise TrainerConfigError(f"--{name.replace('_', '-')} must not be empty")
        if self.min_new_rows < 1:
            raise TrainerConfigError(f"min_new_rows must be >= 1, got {self.min_new_rows}")
        if self.replay_ratio < 0:
            raise TrainerConfigError(f"replay_ratio must be >= 0, got {self.replay_ratio}")
        if self.policy not in ("retrain", "continue"):
            raise TrainerConfigError(f"policy must be 'retrain' or 'continue', got {self.policy!r}")
        if self.model_dtype not in ("auto", "float32", "bfloat16"):
            raise TrainerConfigError(f"model_dtype must be auto, float32 or bfloat16, got {self.model_dtype!r}")
        if self.lora_r < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1:
            raise TrainerConfigError("LoRA needs lora_r >= 1, lora_alpha >= 1 and 0 <= lora_dropout < 1")
        if not 0 <= self.eval_holdout_fraction < 1:
            raise TrainerConfigError(f"eval_holdout_fraction must be in [0, 1), got {self.eval_holdout_fraction}")
        if self.eval_max_rows < 1 or self.eval_max_new_tokens < 1:
            raise TrainerConfigError("eval_max_rows and eval_max_new_tokens must be >= 1")
        if self.eval_max_loss_increase < 0 or not 0 <= self.eval_max_instruction_drop <= 1:
            raise TrainerConfigError("eval_max_loss_increase must be >= 0 and eval_max_instruction_drop in [0, 1]")
        if not self.lora_target_modules:
            raise TrainerConfigError("lora_target_modules must name at least one module")

    def resolved_work_dir(self, cache_home: str | None = None) -> Path:
        """The work dir: explicit, or one per output location so two outputs never share a lock or checkpoints."""
        if self.work_dir:
            return Path(self.work_dir).expanduser().resolve()
        cache = Path(cache_home) if cache_home else Path.home() / ".cache"
        key = hashlib.sha256(self.output_dir.rstrip("/").encode()).hexdigest()[:16]
        return cache / "webr-factory" / "trainer" / key

    def lora_settings(self) -> dict[str, object] | None:
        """The LoRA settings that decide what is trained, or None for full fine-tuning."""
        if not self.use_lora:
            return None
        return {
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "target_modules": list(self.lora_target_modules),
        }


class TrainerEnvironment(LayeredSettings):
    """What the trainer takes from the environment besides its flags (`PipelineArgs`): where `s3://` lives (an
    `--s3-endpoint-url` flag wins over the AWS variables) and the cache root of the default work dir."""

    storage: StorageSettings
    cache_home: Annotated[str | None, Knob(env=("XDG_CACHE_HOME",))] = Field(
        default=None, description="root of the default work dir (default: $XDG_CACHE_HOME, else ~/.cache)"
    )

    @classmethod
    def for_job(cls, pipeline: PipelineArgs) -> TrainerEnvironment:
        given = {"s3_endpoint_url": pipeline.s3_endpoint_url} if pipeline.s3_endpoint_url else {}
        return cls.load(given)
