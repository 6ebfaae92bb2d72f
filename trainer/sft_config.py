"""`WebrSFTConfig`: TRL's `SFTConfig` with the reference recipe as defaults (webr-method.md, "Training recipe").

Importing this module imports trl, transformers and torch: only `trainer.run.make_parser` and the training code do.
The pipeline owns three `SFTConfig` fields, hidden from the command line and YAML (`init=False`): `output_dir`
(the work dir's checkpoint folder; `--output-dir` is the publish location), and `assistant_only_loss` /
`completion_only_loss` (decided from `loss_scope` and the chat template).
"""

import math
from dataclasses import dataclass, field
from typing import Literal

from transformers.trainer_utils import SaveStrategy, SchedulerType
from trl import SFTConfig

from trainer.exceptions import TrainerConfigError

LossScope = Literal["auto", "assistant", "completion", "all"]

# Fields that change what a run trains: a resumed run must agree on all of them with the interrupted one.
TRAINING_FIELDS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "weight_decay",
    "max_length",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "effective_batch_size",
    "loss_scope",
    "packing",
    "packing_strategy",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
)


@dataclass
class WebrSFTConfig(SFTConfig):
    """SFTConfig with the paper's defaults (lr 2e-5, cosine, warmup 0.1, 4 epochs, wd 0, max length 4096, batch 128).

    `effective_batch_size` sets `gradient_accumulation_steps` from the per-device batch and the world size, so
    the same config gives the recipe's batch of 128 on one CPU or eight GPUs. `bf16` left unset means bf16 on a
    GPU that supports it and fp32 elsewhere (SFTConfig's own default, bf16 everywhere, fails on a CPU).
    """

    output_dir: str | None = field(default=None, init=False, repr=False)
    assistant_only_loss: bool = field(default=False, init=False)
    completion_only_loss: bool | None = field(default=None, init=False)

    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (AdamW)."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Learning rate schedule."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warmup: steps if >= 1, else a fraction of the total steps."}
    )
    num_train_epochs: float = field(default=4.0, metadata={"help": "Epochs over the training set."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_length: int | None = field(default=4096, metadata={"help": "Tokens per sequence (truncated beyond)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Sequences per device per micro-step."})
    effective_batch_size: int | None = field(
        default=128,
        metadata={
            "help": "Sequences per optimizer step over all devices; sets gradient_accumulation_steps = "
            "ceil(effective / (per-device batch * world size)). Set 0 to use gradient_accumulation_steps as given."
        },
    )
    loss_scope: LossScope = field(
        default="auto",
        metadata={
            "help": "Tokens that carry the loss. assistant: assistant turns (template needs {%% generation %%} "
            "markers or a TRL training template); completion: the final assistant turn, for any template; all: "
            "every token; auto: assistant if the template allows, else completion."
        },
    )
    save_strategy: SaveStrategy | str = field(default="steps", metadata={"help": "When to checkpoint."})
    save_steps: float = field(default=200, metadata={"help": "Optimizer steps between checkpoints."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept in the work dir."})
    disable_tqdm: bool | None = field(default=True, metadata={"help": "No progress bars: cron logs stay readable."})
    # TRL turns checkpointing on through the name transformers 5 deprecated; the new name keeps logs warning-free.
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Deprecated alias."})
    activation_checkpointing: bool | None = field(
        default=True, metadata={"help": "Recompute activations in the backward pass: less memory, ~20%% slower."}
    )

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and _gpu_supports_bf16()
        if self.loss_scope not in ("auto", "assistant", "completion", "all"):
            raise TrainerConfigError(f"loss_scope must be auto, assistant, completion or all, got {self.loss_scope!r}")
        if self.effective_batch_size is not None and self.effective_batch_size < 0:
            raise TrainerConfigError(f"effective_batch_size must be >= 0, got {self.effective_batch_size}")
        if self.warmup_steps < 0:
            raise TrainerConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.packing and self.max_length is None:
            raise TrainerConfigError("packing needs max_length")
        super().__post_init__()
        if self.effective_batch_size:
            per_step = self.per_device_train_batch_size * self.world_size
            self.gradient_accumulation_steps = max(1, math.ceil(self.effective_batch_size / per_step))

    @property
    def actual_batch_size(self) -> int:
        """Sequences per optimizer step as configured (rounded up from effective_batch_size when not divisible)."""
        return self.per_device_train_batch_size * self.world_size * self.gradient_accumulation_steps

    def training_fields(self) -> dict[str, object]:
        """The hyperparameters that decide what is trained, JSON-ready (for the metadata and the resume check)."""
        values = {name: getattr(self, name) for name in TRAINING_FIELDS}
        return {k: (v.value if hasattr(v, "value") else v) for k, v in values.items()}


def _gpu_supports_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
