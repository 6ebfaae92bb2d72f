"""One cron run: lock, snapshot, decide, train, publish. The main process decides; every rank trains.

The decision (a frozen `Plan`, or "nothing to do") is taken by the main process alone, under the lock, and
broadcast to the other ranks of a distributed launch, so they all train on the same frozen training set.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.storage import Location
from trainer.config import PipelineArgs, TrainerEnvironment
from trainer.data import build_training_set
from trainer.exceptions import EXIT_OK, EXIT_REJECTED, DataError, TrainerError, TrainingFailed
from trainer.gate import evaluate_candidate
from trainer.holdout import split_holdout
from trainer.lock import RunLock
from trainer.metadata import build_metadata
from trainer.snapshot import BadFile, Manifest, SnapshotDiff, diff, take_snapshot
from trainer.store import METADATA, ModelStore
from trainer.workdir import Plan, WorkDir, fingerprint, write_json

if TYPE_CHECKING:
    from trainer.sft_config import WebrSFTConfig

log = logging.getLogger(__name__)

_RUN_PREFIX = "run:"


@dataclass(frozen=True, slots=True)
class Result:
    """How a run ended when it did not fail: `published`, `nothing_to_do` or `rejected` (by the evaluation gate,
    with `exit_code` EXIT_REJECTED), with the facts for the summary."""

    status: str
    message: str
    facts: dict[str, object] = field(default_factory=dict)
    exit_code: int = EXIT_OK


class _FailedOnMain(TrainerError):
    """The main process failed while deciding; the other ranks leave with its exit code."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_job(pipeline: PipelineArgs, cfg: WebrSFTConfig, env: TrainerEnvironment) -> Result:
    """The whole job; raises a `TrainerError` (with its exit code) on failure, having published nothing."""
    work = WorkDir(pipeline.resolved_work_dir(env.cache_home))
    store = ModelStore(env.storage.open(pipeline.output_dir))
    data = env.storage.open(pipeline.data)
    is_main = cfg.process_index == 0
    lock = RunLock(work.lock)
    decision: Plan | Result | tuple[int, str]
    try:
        try:
            if is_main:
                lock.acquire()
            decision = _decide(pipeline, cfg, work, store, data) if is_main else (0, "")
        except Exception as exc:
            _share((getattr(exc, "exit_code", 1), str(exc)), cfg)  # the other ranks must not wait forever
            raise
        decision = _share(decision, cfg)
        if isinstance(decision, tuple):
            raise _FailedOnMain(*decision)
        if isinstance(decision, Result):
            return decision
        return _execute(decision, pipeline, cfg, work, store, is_main)
    finally:
        lock.release()


def _decide(
    pipeline: PipelineArgs, cfg: WebrSFTConfig, work: WorkDir, store: ModelStore, data: Location
) -> Plan | Result:
    fp = fingerprint(pipeline, cfg.training_fields())
    latest = store.latest()
    pending = work.load_plan()
    if pending is not None:
        why = _why_not_resume(pending, fp, latest[0] if latest else None, work)
        if why is None:
            log.info("resuming run %s (snapshot %s) left by an interrupted run", pending.run_id, pending.snapshot_id)
            return pending
        work.discard_pending(why)
    previous = Manifest.from_dict(latest[1]["manifest"]) if latest else None  # type: ignore[arg-type]
    manifest, bad_files = take_snapshot(data, previous, skip_bad_files=pipeline.skip_bad_files)
    changes = diff(manifest, previous)
    since = f"run {latest[0]}" if latest else "the start (nothing published yet)"
    log.info(
        "snapshot %s: %d files, %d rows; %d rows in %d new files since %s",
        manifest.snapshot_id[:12],
        len(manifest.files),
        manifest.rows,
        changes.new_rows,
        len(changes.new),
        since,
    )
    rejected = work.rejected_run(manifest.snapshot_id, fp)
    if rejected is not None:
        return Result(
            "nothing_to_do",
            f"snapshot {manifest.snapshot_id[:12]} was trained as run {rejected} and refused by the evaluation gate "
            f"(kept in {work.rejected / rejected}); waiting for new data",
            {"snapshot": manifest.snapshot_id[:12], "rejected_run": rejected, "latest": latest and latest[0]},
        )
    if changes.new_rows < pipeline.min_new_rows:
        return Result(
            "nothing_to_do",
            f"{changes.new_rows} new rows since {since} (< --min-new-rows {pipeline.min_new_rows}); nothing trained",
            {"snapshot": manifest.snapshot_id[:12], "new_rows": changes.new_rows, "latest": latest and latest[0]},
        )
    return _freeze_plan(pipeline, work, fp, latest, data, manifest, changes, bad_files)


def _freeze_plan(
    pipeline: PipelineArgs,
    work: WorkDir,
    fp: str,
    latest: tuple[str, dict[str, object]] | None,
    data: Location,
    manifest: Manifest,
    changes: SnapshotDiff,
    bad_files: list[BadFile],
) -> Plan:
    """Write the training set and the plan into a fresh pending dir: from here on the run is resumable."""
    work.fresh_pending()
    incremental = pipeline.policy == "continue" and latest is not None
    training_set = build_training_set(
        data,
        changes,
        work.train_file,
        replay_sample=incremental,
        replay_ratio=pipeline.replay_ratio,
        seed=manifest.snapshot_id,
        skip_bad_files=pipeline.skip_bad_files,
    )
    if pipeline.eval_gate:
        training_set = split_holdout(
            training_set, work.heldout_file, pipeline.eval_holdout_fraction, pipeline.eval_max_rows
        )
    tset = asdict(training_set)
    tset["bad_files"] = [asdict(b) for b in bad_files] + tset["bad_files"]
    now = datetime.now(UTC)
    plan = Plan(
        run_id=f"{now:%Y%m%dT%H%M%SZ}-{manifest.snapshot_id[:12]}",
        fingerprint=fp,
        created_at=now.isoformat(),
        policy=pipeline.policy,
        parent_run=latest[0] if latest else None,
        start_model=f"{_RUN_PREFIX}{latest[0]}" if incremental and latest else pipeline.base_model,
        manifest=manifest.to_dict(),
        new_rows_in_manifest=changes.new_rows,
        training_set=tset,
    )
    work.save_plan(plan)
    log.info("planned run %s: %d rows to train on (%s)", plan.run_id, training_set.rows, work.train_file)
    return plan


def _why_not_resume(plan: Plan, fp: str, latest_run: str | None, work: WorkDir) -> str | None:
    if latest_run == plan.run_id:
        return "it was published already"
    if plan.fingerprint != fp:
        return "the settings changed since it was planned"
    if plan.parent_run != latest_run:
        return f"the latest model moved ({plan.parent_run} -> {latest_run}) since it was planned"
    if not work.train_file.is_file():
        return "its training set is missing"
    if plan.training_set.get("heldout_rows") and not work.heldout_file.is_file():
        return "its held-out rows are missing"
    return None


def _execute(
    plan: Plan, pipeline: PipelineArgs, cfg: WebrSFTConfig, work: WorkDir, store: ModelStore, is_main: bool
) -> Result:
    if work.final_complete():
        log.info("run %s was trained already; publishing it", plan.run_id)
    else:
        from trainer.sft import train

        start = plan.start_model
        if start.startswith(_RUN_PREFIX):
            start = str(store.fetch(start.removeprefix(_RUN_PREFIX), work.models)) if is_main else start
            start = _share(start, cfg)
        try:
            outcome = train(
                start_model=start,
                train_file=work.train_file,
                checkpoints=work.checkpoints,
                final_dir=work.final,
                pipeline=pipeline,
                cfg=cfg,
            )
        except DataError:
            if is_main:
                work.discard_pending("its training set cannot be trained on")  # the next run plans afresh
            raise
        except TrainerError:
            raise
        except Exception as exc:  # OOM, NaN, a library error: the checkpoints stay for the next run
            log.exception("training run %s failed", plan.run_id)
            raise TrainingFailed(f"training run {plan.run_id} failed: {type(exc).__name__}: {exc}") from exc
        if is_main:
            metadata = build_metadata(plan, pipeline, cfg, outcome, start)
            write_json(work.final / METADATA, metadata)
    tset = plan.training_set
    facts = {
        "run_id": plan.run_id,
        "snapshot": plan.snapshot_id[:12],
        "rows": tset["rows"],
        "skipped_rows": sum(tset["skipped"].values()),
        "bad_files": len(tset["bad_files"]),
    }
    if not is_main:
        _barrier(cfg)
        return Result("published", f"rank {cfg.process_index} done", facts)
    verdict = evaluate_candidate(plan, pipeline, cfg, work, store) if pipeline.eval_gate else None
    if verdict is not None:
        facts.update(verdict.facts())
        if not verdict.promoted:
            kept = work.keep_rejected(plan.run_id)
            work.clear_pending()
            _barrier(cfg)
            message = f"run {plan.run_id} refused by the evaluation gate: {'; '.join(verdict.reasons)}; kept in {kept}"
            log.error("%s", message)
            return Result("rejected", message, {**facts, "kept": str(kept)}, EXIT_REJECTED)
    uri = store.publish(work.final, plan.run_id)
    work.clear_pending()
    _barrier(cfg)
    log.info("published %s", uri)
    return Result("published", f"published run {plan.run_id} to {uri}", {**facts, "uri": uri})


def _share(value: Any, cfg: WebrSFTConfig) -> Any:
    """The main process's `value` on every rank (a no-op in a single process)."""
    if cfg.world_size <= 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(cfg: WebrSFTConfig) -> None:
    if cfg.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
