"""Supervised fine-tuning of one run with TRL's SFTTrainer, resumable from the work dir's last checkpoint.

Heavy imports (torch, transformers, trl, peft, datasets) happen inside the functions. Every rank of a
distributed launch calls `train`; only the main process writes the final model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import PipelineArgs
from trainer.exceptions import DataError, TrainerConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from trainer.sft_config import WebrSFTConfig

log = logging.getLogger(__name__)

_CHECKPOINT_PREFIX = "checkpoint-"


@dataclass(frozen=True, slots=True)
class TrainOutcome:
    """What the metadata records about the optimisation itself."""

    loss_scope: str
    global_step: int
    resumed_from: str | None
    train_loss: float | None
    log_history: list[dict[str, Any]]
    trainable_parameters: int
    world_size: int
    actual_batch_size: int
    precision: str
    rows_without_loss_tokens: int


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint: its trainer_state.json, written last by the Trainer, parses."""
    if not checkpoints.is_dir():
        return None
    steps = []
    for path in checkpoints.glob(f"{_CHECKPOINT_PREFIX}*"):
        suffix = path.name.removeprefix(_CHECKPOINT_PREFIX)
        if suffix.isdigit() and path.is_dir():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("ignoring incomplete checkpoint %s", path)
            continue
        return path
    return None


def resolve_loss_scope(requested: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """`auto` -> `assistant` when the template has generation markers (or TRL can patch it), else `completion`."""
    if not tokenizer.chat_template:
        raise TrainerConfigError("the model has no chat template: pass --chat_template_path (a .jinja file or model)")
    if requested in ("completion", "all"):
        return requested
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
    except ValueError as exc:
        if requested == "assistant":
            raise TrainerConfigError(f"loss_scope=assistant is impossible with this chat template: {exc}") from exc
        log.warning("chat template has no {%% generation %%} markers: loss on the final assistant turn only")
        return "completion"
    return "assistant"


def train(
    *,
    start_model: str,
    train_file: Path,
    checkpoints: Path,
    final_dir: Path,
    pipeline: PipelineArgs,
    cfg: WebrSFTConfig,
) -> TrainOutcome:
    """Train on the frozen training set, resuming from the newest checkpoint, and save the model in `final_dir`."""
    trainer, scope, dropped = _build_trainer(start_model, train_file, checkpoints, pipeline, cfg)
    resume = last_checkpoint(checkpoints)
    if resume is not None:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    _save_final(trainer, start_model, final_dir, pipeline, cfg)
    return TrainOutcome(
        loss_scope=scope,
        global_step=trainer.state.global_step,
        resumed_from=resume.name if resume else None,
        train_loss=result.training_loss,
        log_history=list(trainer.state.log_history),
        trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        world_size=cfg.world_size,
        actual_batch_size=cfg.actual_batch_size,
        precision="bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "fp32",
        rows_without_loss_tokens=dropped,
    )


def _build_trainer(
    start_model: str, train_file: Path, checkpoints: Path, pipeline: PipelineArgs, cfg: WebrSFTConfig
) -> tuple[Any, str, int]:
    """The SFTTrainer, the loss scope it uses, and how many rows TRL dropped for having no loss token left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(start_model)
    model = AutoModelForCausalLM.from_pretrained(start_model, dtype=_dtype(pipeline, cfg))
    model, tokenizer = _apply_chat_template_path(cfg, model, tokenizer)
    scope = resolve_loss_scope(cfg.loss_scope, tokenizer)
    cfg.output_dir = str(checkpoints)
    cfg.assistant_only_loss = scope == "assistant"
    cfg.completion_only_loss = scope == "completion"
    dataset = _dataset(train_file, scope, checkpoints.parent / "hf-cache")
    trainer = SFTTrainer(
        model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer, peft_config=_lora_config(pipeline)
    )
    trainer.remove_callback(PrinterCallback)  # it print()s every log to stdout; ours goes through logging
    trainer.add_callback(_logging_callback())
    # TRL truncates to max_length and drops the rows left without a single loss token (a long prompt).
    dropped = 0 if cfg.packing else len(dataset) - len(trainer.train_dataset)
    if len(trainer.train_dataset) == 0:
        raise DataError(
            f"none of the {len(dataset)} rows has a {scope} token within max_length={cfg.max_length}: "
            "the prompts are longer; raise --max-length"
        )
    if dropped:
        log.warning(
            "%d of %d rows have no %s token within max_length=%s: left out",
            dropped,
            len(dataset),
            scope,
            cfg.max_length,
        )
    return trainer, scope, dropped


def _dtype(pipeline: PipelineArgs, cfg: WebrSFTConfig) -> Any:
    import torch

    return torch.bfloat16 if pipeline.model_dtype == "bfloat16" else torch.float32


def _apply_chat_template_path(cfg: WebrSFTConfig, model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """Apply --chat_template_path here, so the loss scope is decided on the template actually trained with."""
    path = cfg.chat_template_path
    if path is None:
        return model, tokenizer
    if path.endswith((".jinja", ".j2")):
        tokenizer.chat_template = Path(path).read_text(encoding="utf-8")
    else:
        from trl.chat_template_utils import clone_chat_template

        model, tokenizer, _ = clone_chat_template(model, tokenizer, path)
    cfg.chat_template_path = None
    return model, tokenizer


def _dataset(train_file: Path, scope: str, cache_dir: Path) -> Any:
    """`messages` rows (conversational LM), or prompt/completion pairs split at the final assistant turn."""
    from datasets import Dataset

    dataset = Dataset.from_parquet(str(train_file), cache_dir=str(cache_dir)).select_columns(["messages"])
    if scope != "completion":
        return dataset
    return dataset.map(
        lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]},
        remove_columns=["messages"],
    )


def _lora_config(pipeline: PipelineArgs) -> Any:
    settings = pipeline.lora_settings()
    if settings is None:
        return None
    from peft import LoraConfig

    targets = settings["target_modules"]
    return LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


def _save_final(trainer: Any, start_model: str, final_dir: Path, pipeline: PipelineArgs, cfg: WebrSFTConfig) -> None:
    """Full fine-tuning: the Trainer's own save (gathers FSDP/ZeRO-3 shards). LoRA: the adapter merged into a
    full model, so every published directory loads alone."""
    if not pipeline.use_lora:
        trainer.save_model(str(final_dir))
        (final_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the metadata has the settings as JSON
        return
    adapter_dir = final_dir.with_name(final_dir.name + "-adapter")
    trainer.save_model(str(adapter_dir))
    if trainer.accelerator.is_main_process:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(start_model, dtype=_dtype(pipeline, cfg))
        rows = trainer.model.get_input_embeddings().num_embeddings  # changed only by --chat_template_path
        if base.get_input_embeddings().num_embeddings != rows:
            base.resize_token_embeddings(rows)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(str(final_dir))
        trainer.processing_class.save_pretrained(str(final_dir))
    trainer.accelerator.wait_for_everyone()


def _logging_callback() -> Any:
    from transformers import TrainerCallback

    class LogToLogging(TrainerCallback):
        """Loss, learning rate and throughput as log lines (cron's stderr), not print()s."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                shown = {k: round(v, 6) if isinstance(v, float) else v for k, v in logs.items()}
                log.info("step %d/%d %s", state.global_step, state.max_steps, shown)

    return LogToLogging()
