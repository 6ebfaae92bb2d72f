"""The evaluation gate end to end with the tiny chat model: a fine-tuned candidate is promoted, a candidate made
worse on purpose (a learning rate that wrecks it) is refused, kept for inspection, and not trained again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from core.storage import resolve
from trainer.data import TrainingSet, build_training_set
from trainer.exceptions import EXIT_OK, EXIT_REJECTED
from trainer.holdout import read_heldout, split_holdout
from trainer.snapshot import diff, take_snapshot

from .conftest import Dirs, write_pairs

Run = Callable[[list[str]], tuple[int, str]]

LEARN = ["--max-steps", "8", "--learning-rate", "3e-3", "--eval-holdout-fraction", "0.2"]
WRECK = ["--max-steps", "4", "--learning-rate", "50", "--eval-holdout-fraction", "0.2"]


def evaluation(run_dir: Path) -> dict:
    return json.loads((run_dir / "training_metadata.json").read_text())["evaluation"]


def test_gate_promotes_a_fine_tuned_candidate_and_refuses_a_wrecked_one(dirs: Dirs, run_inprocess: Run) -> None:
    write_pairs(dirs.data, 0, 20)
    code, line = run_inprocess(dirs.args(*LEARN, "--eval-instructions", "true", "--eval-max-new-tokens", "8"))
    assert code == EXIT_OK, line
    assert "status=published" in line
    first = dirs.latest()
    assert first is not None
    gate = evaluation(dirs.out / first)
    assert gate["promoted"] is True
    assert gate["incumbent"]["model"] == str(dirs.model)  # nothing published yet: compared with the base model
    assert gate["candidate"]["heldout_loss"] < gate["incumbent"]["heldout_loss"]
    assert f"eval_loss={gate['candidate']['heldout_loss']:.4f}" in line
    assert 0.0 <= gate["candidate"]["instructions"] <= 1.0
    assert gate["heldout_rows"] >= 1
    meta = json.loads((dirs.out / first / "training_metadata.json").read_text())
    assert meta["rows"]["trained"] + gate["heldout_rows"] == 20

    write_pairs(dirs.data, 20, 10)
    code, line = run_inprocess(dirs.args(*WRECK))
    assert code == EXIT_REJECTED, line
    assert "status=rejected" in line
    assert "refused by the evaluation gate" in line
    assert dirs.latest() == first, "a refused candidate must not move latest"
    assert dirs.runs() == [first], "a refused candidate must not be published"
    kept = sorted((dirs.work / "rejected").iterdir())
    assert len(kept) == 1
    assert (kept[0] / "model.safetensors").is_file()
    gate = evaluation(kept[0])
    assert gate["promoted"] is False
    assert gate["incumbent"]["model"].endswith(first)
    assert not gate["candidate"]["heldout_loss"] <= gate["incumbent"]["heldout_loss"]  # worse, or NaN

    code, line = run_inprocess(dirs.args(*WRECK))
    assert code == EXIT_OK, line
    assert "status=nothing_to_do" in line
    assert f"rejected_run={kept[0].name}" in line
    assert dirs.latest() == first


def test_held_out_documents_are_never_trained_on(dirs: Dirs, run_inprocess: Run) -> None:
    write_pairs(dirs.data, 0, 40)
    code, line = run_inprocess(dirs.args("--eval-holdout-fraction", "0.25"))
    assert code == EXIT_OK, line
    run_dir = dirs.out / str(dirs.latest())
    meta = json.loads((run_dir / "training_metadata.json").read_text())
    held = meta["evaluation"]["heldout_rows"]
    assert 1 <= held < 40
    assert meta["rows"]["trained"] == 40 - held


def _training_set(data: Path, out: Path) -> TrainingSet:
    manifest, _ = take_snapshot(resolve(str(data)))
    return build_training_set(
        resolve(str(data)), diff(manifest, None), out, replay_sample=False, replay_ratio=0.0, seed="s"
    )


def test_the_same_documents_are_held_out_in_every_run(tmp_path: Path) -> None:
    write_pairs(tmp_path / "data", 0, 50)
    held = []
    for attempt in ("a", "b"):
        tset = _training_set(tmp_path / "data", tmp_path / attempt / "train.parquet")
        split = split_holdout(tset, tmp_path / attempt / "heldout.parquet", 0.2, 100)
        trained = set(pq.read_table(split.path).column("doc_id").to_pylist())
        out = set(pq.read_table(tmp_path / attempt / "heldout.parquet").column("doc_id").to_pylist())
        assert not trained & out
        assert len(trained) + len(out) == 50 == split.rows + split.heldout_rows
        held.append(out)
    assert held[0] == held[1]
    assert 3 <= len(held[0]) <= 20  # about a fifth of 50, drawn by hash


def test_a_two_row_snapshot_holds_one_row_out_and_a_one_row_snapshot_none(tmp_path: Path) -> None:
    write_pairs(tmp_path / "two", 0, 2)
    split = split_holdout(_training_set(tmp_path / "two", tmp_path / "t2.parquet"), tmp_path / "h2.parquet", 0.0, 9)
    assert (split.rows, split.heldout_rows) == (1, 1)
    assert len(read_heldout(tmp_path / "h2.parquet")) == 1
    write_pairs(tmp_path / "one", 0, 1)
    split = split_holdout(_training_set(tmp_path / "one", tmp_path / "t1.parquet"), tmp_path / "h1.parquet", 0.5, 9)
    assert (split.rows, split.heldout_rows) == (1, 0)  # never every row, whatever its draw
