"""Settings: the paper's defaults, the derived accumulation, strict YAML, validators that run."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trainer.exceptions import EXIT_USAGE, TrainerConfigError
from trainer.run import parse_args

from .conftest import REPO

REQUIRED = ["--data", "d", "--base-model", "m", "--output-dir", "o"]


def test_defaults_are_the_reference_recipe_and_fp32_on_cpu() -> None:
    pipeline, cfg = parse_args([*REQUIRED, "--per-device-train-batch-size", "4"])
    assert cfg.learning_rate == 2e-5
    assert cfg.lr_scheduler_type.value == "cosine"
    assert cfg.warmup_steps == 0.1
    assert cfg.num_train_epochs == 4
    assert cfg.weight_decay == 0.0
    assert cfg.max_length == 4096
    assert cfg.gradient_accumulation_steps == 32  # 128 / (4 per device * 1 process)
    assert cfg.actual_batch_size == 128
    assert cfg.bf16 is False  # no GPU here: SFTConfig's own default (bf16) would fail on a CPU
    assert pipeline.min_new_rows == 1
    assert pipeline.policy == "retrain"


def test_effective_batch_rounds_up_and_zero_keeps_accumulation_as_given() -> None:
    _, cfg = parse_args([*REQUIRED, "--per-device-train-batch-size", "5", "--effective-batch-size", "12"])
    assert cfg.gradient_accumulation_steps == 3
    _, cfg = parse_args([*REQUIRED, "--effective-batch-size", "0", "--gradient-accumulation-steps", "7"])
    assert cfg.gradient_accumulation_steps == 7


def test_yaml_config_applies_and_the_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        "data: s3://bucket/pairs\nbase_model: /models/base\noutput_dir: /models/out\n"
        "learning_rate: 1e-5\npolicy: continue\nuse_lora: true\nlora_target_modules: [q_proj, v_proj]\n"
        "num_train_epochs: 2\n"
    )
    pipeline, cfg = parse_args(["--config", str(config), "--num-train-epochs", "3"])
    assert (pipeline.data, pipeline.policy, pipeline.use_lora) == ("s3://bucket/pairs", "continue", True)
    assert pipeline.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.learning_rate == 1e-5  # "1e-5" is a string to YAML 1.1: the parser's own type makes it a float
    assert cfg.num_train_epochs == 3


def test_unknown_yaml_key_is_refused_with_a_hint(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("data: d\nbase_model: m\noutput_dir: o\nlearning_rat: 1.0e-5\n")
    with pytest.raises(TrainerConfigError, match=r"unknown keys .*'learning_rat' \(did you mean 'learning_rate'\?\)"):
        parse_args(["--config", str(config)])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-new-rows", "0"], "min_new_rows must be >= 1"),
        (["--replay-ratio", "-1"], "replay_ratio must be >= 0"),
        (["--warmup-steps", "-0.5"], "warmup_steps must be >= 0"),
        (["--unknown-flag", "1"], "unknown-flag"),
    ],
)
def test_invalid_settings_are_refused(extra: list[str], message: str) -> None:
    with pytest.raises(TrainerConfigError, match=message):
        parse_args([*REQUIRED, *extra])


@pytest.mark.parametrize(
    ("line", "message"),
    [("loss_scope: everything", "invalid choice: 'everything'"), ("min_new_rows: 0", "min_new_rows must be >= 1")],
)
def test_yaml_values_go_through_the_validators(tmp_path: Path, line: str, message: str) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(f"data: d\nbase_model: m\noutput_dir: o\n{line}\n")
    with pytest.raises(TrainerConfigError, match=message):
        parse_args(["--config", str(config)])


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_bytes(b"data: caf\xe9\n")
    with pytest.raises(TrainerConfigError, match="cannot read config"):
        parse_args(["--config", str(config)])


def test_cli_exits_2_on_an_unknown_config_key(
    tmp_path: Path, run_inprocess: Callable[[list[str]], tuple[int, str]]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("data: d\nbase_model: m\noutput_dir: o\nmax_step: 2\n")
    code, line = run_inprocess(["--config", str(config)])
    assert code == EXIT_USAGE
    assert "status=error exit=2" in line
    assert "max_step" in line


def test_importing_the_script_stays_light() -> None:
    """cron and --help pay for torch only when parsing needs SFTConfig, never on import."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", "import sys, trainer.run; print(sorted({'torch', 'trl'} & set(sys.modules)))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
    assert time.monotonic() - started < 5


def test_the_deployed_example_config_is_valid() -> None:
    """deploy/cron/trainer.example.yaml is what operators copy: it must parse, keys and values."""
    pipeline, cfg = parse_args(["--config", str(REPO / "deploy/cron/trainer.example.yaml")])
    assert pipeline.data.startswith("s3://")
    assert pipeline.min_new_rows == 5000
    assert cfg.learning_rate == 2e-5
    assert cfg.gradient_accumulation_steps == 32
