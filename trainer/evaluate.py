"""The evaluation gate: a candidate is promoted only if it is not worse than the model it would replace.

Both models are scored the same way, in this process, on CPU or the first GPU:
- always, the mean loss per response token on the run's held-out rows (`trainer.holdout`), the prompt masked as
  in training; lower is better;
- optionally (`--eval_instructions`), the share of the shipped instruction-following prompts
  (`trainer.instructions`) whose greedy reply passes its checks; higher is better.
The candidate fails when its loss is higher by more than `--eval_max_loss_increase` (relative) or its
instruction score lower by more than `--eval_max_instruction_drop` (absolute).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.instructions import load_instructions, passes

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scores:
    """One model's scores; `instructions` is None when that check was not run."""

    model: str
    heldout_loss: float
    heldout_tokens: int
    instructions: float | None = None
    failed_instructions: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GateSettings:
    max_loss_increase: float
    instructions: bool
    max_instruction_drop: float
    max_length: int
    max_new_tokens: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gate's decision with both models' scores, as recorded in the metadata and the summary line."""

    promoted: bool
    reasons: list[str]
    candidate: Scores
    incumbent: Scores
    heldout_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def facts(self) -> dict[str, object]:
        out: dict[str, object] = {
            "eval_loss": f"{self.candidate.heldout_loss:.4f}",
            "incumbent_loss": f"{self.incumbent.heldout_loss:.4f}",
        }
        if self.candidate.instructions is not None and self.incumbent.instructions is not None:
            out["eval_instructions"] = f"{self.candidate.instructions:.2f}"
            out["incumbent_instructions"] = f"{self.incumbent.instructions:.2f}"
        return out


def score(model_dir: str, heldout: list[list[dict[str, str]]], settings: GateSettings) -> Scores:
    """Load one model and score it (the model is freed when this returns)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    loss, tokens = heldout_loss(model, tokenizer, heldout, settings.max_length)
    instructions, failed = None, []
    if settings.instructions:
        instructions, failed = instruction_score(model, tokenizer, settings.max_new_tokens)
    log.info("scored %s: held-out loss %.4f over %d tokens, instructions %s", model_dir, loss, tokens, instructions)
    return Scores(model_dir, loss, tokens, instructions, failed)


def heldout_loss(model: Any, tokenizer: Any, rows: list[list[dict[str, str]]], max_length: int) -> tuple[float, int]:
    """Mean negative log-likelihood per token of the final assistant turn, the rest of the chat as context."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.inference_mode():
        for messages in rows:
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
            ids = tokenizer(full, add_special_tokens=False).input_ids[:max_length]
            if len(ids) <= start + 1:
                continue  # the response does not fit in max_length: training left it out too
            input_ids = torch.tensor([ids], device=model.device)
            logits = model(input_ids=input_ids).logits[0, start - 1 : -1].float()
            nll = F.cross_entropy(logits, input_ids[0, start:], reduction="sum")
            total += nll.item()
            count += len(ids) - start
    return (total / count if count else math.nan), count


def instruction_score(model: Any, tokenizer: Any, max_new_tokens: int) -> tuple[float, list[str]]:
    """Greedy replies to the shipped prompts; (share passed, ids of the prompts failed)."""
    import torch

    instructions = load_instructions()
    failed = []
    with torch.inference_mode():
        for item in instructions:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": item.prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
            out = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
            if not passes(item, reply):
                failed.append(item.id)
    return 1 - len(failed) / len(instructions), failed


def judge(candidate: Scores, incumbent: Scores, settings: GateSettings, heldout_rows: int) -> Verdict:
    """Promote unless the candidate is worse than the incumbent by more than the margins (NaN is worse)."""
    reasons = []
    limit = incumbent.heldout_loss * (1 + settings.max_loss_increase)
    if not candidate.heldout_loss <= limit:  # also true for NaN
        reasons.append(
            f"held-out loss {candidate.heldout_loss:.4f} > {incumbent.heldout_loss:.4f} "
            f"x (1 + {settings.max_loss_increase})"
        )
    if candidate.instructions is not None and incumbent.instructions is not None:
        floor = incumbent.instructions - settings.max_instruction_drop
        if candidate.instructions < floor:
            reasons.append(
                f"instruction score {candidate.instructions:.2f} < {incumbent.instructions:.2f} "
                f"- {settings.max_instruction_drop}"
            )
    return Verdict(not reasons, reasons, candidate, incumbent, heldout_rows)
