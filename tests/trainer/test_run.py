"""`python -m trainer.run` end to end on CPU with the tiny chat model: train, skip, retrain, publish, fail cleanly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from core.markers import advance_marker
from core.storage import resolve
from trainer.exceptions import EXIT_DATA, EXIT_OK
from trainer.snapshot import take_snapshot

from .conftest import Dirs, chat, pairs_table, rows_used, write_pairs, write_rows

Run = Callable[[list[str]], tuple[int, str]]


def metadata(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "training_metadata.json").read_text())


def unchanged_tensors(before: Path, after: Path) -> list[str]:
    """Names of the tensors equal in both models (TRL's behavioural check, on the published files)."""
    import torch
    from safetensors.torch import load_file

    old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    assert old.keys() == new.keys()
    return sorted(k for k in old if torch.allclose(old[k], new[k]))


def test_first_run_publishes_second_skips_new_data_trains_again(dirs: Dirs, run_inprocess: Run) -> None:
    write_pairs(dirs.data, 0, 6)
    code, line = run_inprocess(dirs.args())
    assert code == EXIT_OK
    assert "status=published" in line
    first = dirs.latest()
    assert first is not None
    assert dirs.runs() == [first]
    run_dir = dirs.out / first
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "training_args.bin").exists()
    assert unchanged_tensors(dirs.model, run_dir) == [], "every trainable parameter must change"

    meta = metadata(run_dir)
    snapshot, _ = take_snapshot(resolve(str(dirs.data)))
    assert meta["snapshot_id"] == snapshot.snapshot_id
    assert [f["path"] for f in meta["manifest"]["files"]] == [f.path for f in snapshot.files]
    assert meta["rows"]["snapshot"] == rows_used(meta) == 6
    assert len(meta["data_sha256"]) == 64
    assert meta["hyperparameters"]["training"]["max_steps"] == 2
    assert meta["hyperparameters"]["training"]["learning_rate"] == 1e-4
    assert meta["training"]["loss_scope"] == "assistant"  # the template has {% generation %} markers
    assert meta["training"]["global_step"] == 2
    assert meta["training"]["precision"] == "fp32"
    assert [h["step"] for h in meta["loss_history"] if "loss" in h] == [1, 2]
    assert len(meta["code"]["revision"]) == 40
    assert not (dirs.work / "pending").exists()

    code, line = run_inprocess(dirs.args())
    assert code == EXIT_OK
    assert "status=nothing_to_do" in line
    assert "0 new rows" in line
    assert dirs.latest() == first
    assert dirs.runs() == [first]

    write_pairs(dirs.data, 6, 4)
    code, line = run_inprocess(dirs.args())
    assert code == EXIT_OK
    assert "status=published" in line
    second = dirs.latest()
    assert second not in (None, first)
    assert sorted(dirs.runs()) == sorted([first, second])
    meta2 = metadata(dirs.out / second)
    assert meta2["parent_run"] == first
    assert meta2["rows"]["new_in_snapshot"] == 4
    assert rows_used(meta2) == 10  # retrain: the base model on all rows
    assert meta2["start_model"] == str(dirs.model)


def test_min_new_rows_holds_training_back(dirs: Dirs, run_inprocess: Run) -> None:
    write_pairs(dirs.data, 0, 3)
    code, line = run_inprocess(dirs.args("--min-new-rows", "5"))
    assert (code, dirs.latest()) == (EXIT_OK, None)
    assert "3 new rows" in line
    assert "nothing trained" in line


def test_continue_policy_trains_the_latest_on_new_rows_plus_replay(dirs: Dirs, run_inprocess: Run) -> None:
    write_pairs(dirs.data, 0, 8)
    assert run_inprocess(dirs.args())[0] == EXIT_OK
    first = dirs.latest()
    write_pairs(dirs.data, 8, 4)
    code, _ = run_inprocess(dirs.args("--policy", "continue", "--replay-ratio", "0.5"))
    assert code == EXIT_OK
    second = dirs.latest()
    meta = metadata(dirs.out / second)
    assert meta["start_model"] == f"run:{first}"
    assert (meta["rows"]["from_new_files"], meta["rows"]["from_old_files"]) == (4, 2)
    assert unchanged_tensors(dirs.out / first, dirs.out / second) == []


def test_lora_publishes_a_merged_model_that_loads_alone(dirs: Dirs, run_inprocess: Run) -> None:
    write_pairs(dirs.data, 0, 6)
    code, _ = run_inprocess(
        dirs.args(
            "--use-lora", "--lora-target-modules", "q_proj", "v_proj", "--learning-rate", "1e-2", "--warmup-steps", "0"
        )
    )
    assert code == EXIT_OK
    run_dir = dirs.out / dirs.latest()
    assert not (run_dir / "adapter_config.json").exists()
    unchanged = unchanged_tensors(dirs.model, run_dir)
    assert not [k for k in unchanged if "q_proj" in k or "v_proj" in k], "the merged LoRA must change its targets"
    assert "model.layers.0.mlp.up_proj.weight" in unchanged  # not a LoRA target: untouched
    assert metadata(run_dir)["hyperparameters"]["pipeline"]["use_lora"] is True


def test_malformed_rows_are_skipped_and_reported(dirs: Dirs, run_inprocess: Run) -> None:
    rows = [chat(0), [], chat(2), [{"role": "user", "content": "no answer"}], chat(4)]
    write_rows(dirs.data, 0, rows)
    code, line = run_inprocess(dirs.args())
    assert code == EXIT_OK
    assert "skipped_rows=2" in line
    meta = metadata(dirs.out / dirs.latest())
    assert rows_used(meta) == 3
    assert meta["rows"]["skipped"] == {"messages_empty": 1, "last_turn_not_assistant": 1}


def test_corrupt_file_fails_cleanly_or_is_skipped_when_asked(dirs: Dirs, run_inprocess: Run) -> None:
    write_pairs(dirs.data, 0, 4)
    corrupt = dirs.data / "webr/0/webr+0+00000000000000000004.parquet"
    corrupt.write_bytes(b"PAR1" + b"\x00" * 64)
    code, line = run_inprocess(dirs.args())
    assert code == EXIT_DATA
    assert "status=error exit=3" in line
    assert "webr+0+00000000000000000004.parquet: unreadable Parquet" in line
    assert (dirs.latest(), dirs.runs()) == (None, [])

    code, _ = run_inprocess(dirs.args("--skip-bad-files"))
    assert code == EXIT_OK
    meta = metadata(dirs.out / dirs.latest())
    assert [b["path"] for b in meta["bad_files"]] == ["webr/0/webr+0+00000000000000000004.parquet"]
    assert rows_used(meta) == 4


def test_prompts_longer_than_max_length_are_reported_or_refused(dirs: Dirs, run_inprocess: Run) -> None:
    long_prompt = [{"role": "user", "content": "the garden " * 200}, {"role": "assistant", "content": "Yes."}]
    (dirs.data / "webr/0").mkdir(parents=True)
    pq.write_table(pairs_table([chat(0), long_prompt, chat(2)]), dirs.data / "webr/0/a.parquet")
    code, line = run_inprocess(dirs.args("--eval-gate", "false"))  # else the long row is the one held out
    assert code == EXIT_OK, line
    meta = metadata(dirs.out / dirs.latest())
    assert (rows_used(meta), meta["rows"]["without_loss_tokens"]) == (3, 1)

    write_pairs(dirs.data, 10, 2)
    code, line = run_inprocess(dirs.args("--max-length", "8"))  # no row keeps an assistant token
    assert code == EXIT_DATA, line
    assert "raise --max-length" in line
    assert len(dirs.runs()) == 1
    assert not (dirs.work / "pending").exists(), "a set that cannot train is not resumed forever"


@pytest.mark.parametrize("content", ["none", "only_rejected"])
def test_empty_snapshot_is_an_error_and_publishes_nothing(dirs: Dirs, run_inprocess: Run, content: str) -> None:
    if content == "only_rejected":
        write_pairs(dirs.data, 0, 3, subdir="_rejected/webr/0")
    code, line = run_inprocess(dirs.args())
    assert code == EXIT_DATA
    assert "empty snapshot" in line
    assert dirs.latest() is None


def test_data_and_models_on_object_storage(dirs: Dirs, run_inprocess: Run, s3_bucket: Any) -> None:
    """s3:// for both roots: the dataset is read, the model uploaded, `latest` put last, then fetched back."""
    import pyarrow.fs as pafs

    data_uri, out_uri = s3_bucket.uri("pairs"), s3_bucket.uri("models")
    data = resolve(data_uri, s3_endpoint_url=s3_bucket.endpoint_url)
    fs = data.fs
    local = write_pairs(dirs.data, 0, 6)
    pafs.copy_files(str(local), f"{s3_bucket.name}/pairs/webr/0/{local.name}", destination_filesystem=fs)
    advance_marker(data, "webr", 0, 6)
    args = ["--data", data_uri, "--output-dir", out_uri, "--s3-endpoint-url", s3_bucket.endpoint_url]
    base = dirs.args(*args)
    assert run_inprocess(base)[0] == EXIT_OK
    first = s3_bucket.server.client().get_object(Bucket=s3_bucket.name, Key="models/latest")["Body"].read()
    first_id = first.decode().strip()
    keys = s3_bucket.keys("models/")
    assert f"models/{first_id}/config.json" in keys
    assert f"models/{first_id}/training_metadata.json" in keys
    assert "nothing_to_do" in run_inprocess(base)[1]

    more = write_pairs(dirs.data, 6, 3)
    pafs.copy_files(str(more), f"{s3_bucket.name}/pairs/webr/0/{more.name}", destination_filesystem=fs)
    advance_marker(data, "webr", 0, 9)
    code, line = run_inprocess([*base, "--policy", "continue"])
    assert code == EXIT_OK, line
    assert f"models/{first_id}/config.json" in s3_bucket.keys("models/")
    assert s3_bucket.keys("models/latest") == ["models/latest"]


def test_template_without_generation_markers_falls_back_to_completion_loss(
    dirs: Dirs, run_inprocess: Run, tmp_path: Path
) -> None:
    """A chat template TRL cannot mask per turn still trains on the answer only: a prompt/completion split."""
    import shutil

    model = tmp_path / "plain-template-model"
    shutil.copytree(dirs.model, model)
    template = model / "chat_template.jinja"
    plain = template.read_text().replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert plain != template.read_text()
    template.write_text(plain)
    write_pairs(dirs.data, 0, 4)
    code, line = run_inprocess(dirs.args("--base-model", str(model), "--loss-scope", "assistant"))
    assert code == 2, line
    assert "loss_scope=assistant is impossible" in line
    code, line = run_inprocess(dirs.args("--base-model", str(model)))
    assert code == EXIT_OK, line
    meta = metadata(dirs.out / dirs.latest())
    assert meta["training"]["loss_scope"] == "completion"
    assert unchanged_tensors(model, dirs.out / dirs.latest()) == []


def test_packing_trains_and_is_recorded(dirs: Dirs, run_inprocess: Run) -> None:
    write_pairs(dirs.data, 0, 6)
    code, line = run_inprocess(dirs.args("--packing"))
    assert code == EXIT_OK, line
    meta = metadata(dirs.out / dirs.latest())
    assert meta["hyperparameters"]["training"]["packing"] is True
    assert meta["training"]["global_step"] == 2
