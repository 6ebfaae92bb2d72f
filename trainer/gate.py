"""The evaluation gate inside a run: score the trained candidate against the model it would replace.

The model it would replace is the run's parent (the `latest` model when the run was planned; a resume is refused
once `latest` moved), or the base model before anything was published. The verdict goes into the candidate's
metadata whatever it is, so a kept rejected candidate says why it was refused.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from trainer.config import PipelineArgs
from trainer.evaluate import GateSettings, Verdict, judge, score
from trainer.holdout import read_heldout
from trainer.store import METADATA, ModelStore
from trainer.workdir import Plan, WorkDir, write_json

if TYPE_CHECKING:
    from trainer.sft_config import WebrSFTConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 1024


def evaluate_candidate(
    plan: Plan, pipeline: PipelineArgs, cfg: WebrSFTConfig, work: WorkDir, store: ModelStore
) -> Verdict | None:
    """The verdict on `work.final`, also written into its metadata; None when nothing held out can be scored."""
    heldout = read_heldout(work.heldout_file)
    if not heldout:
        log.warning("evaluation gate: no held-out row (a one-row snapshot); promoting without a comparison")
        _record(work, {"skipped": "no held-out row"})
        return None
    settings = GateSettings(
        max_loss_increase=pipeline.eval_max_loss_increase,
        instructions=pipeline.eval_instructions,
        max_instruction_drop=pipeline.eval_max_instruction_drop,
        max_length=cfg.max_length or DEFAULT_MAX_LENGTH,
        max_new_tokens=pipeline.eval_max_new_tokens,
    )
    incumbent = str(store.fetch(plan.parent_run, work.models)) if plan.parent_run else pipeline.base_model
    candidate = score(str(work.final), heldout, settings)
    if candidate.heldout_tokens == 0:
        log.warning("evaluation gate: no held-out response fits in max_length; promoting without a comparison")
        _record(work, {"skipped": "no held-out response token within max_length", "heldout_rows": len(heldout)})
        return None
    verdict = judge(candidate, score(incumbent, heldout, settings), settings, len(heldout))
    _record(work, verdict.to_dict())
    log.info("evaluation gate: %s %s", "promote" if verdict.promoted else "refuse", verdict.facts())
    return verdict


def _record(work: WorkDir, evaluation: dict[str, object]) -> None:
    path = work.final / METADATA
    metadata = json.loads(path.read_text())
    metadata["evaluation"] = evaluation
    write_json(path, metadata)
