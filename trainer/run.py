"""`python -m trainer.run`: fine-tune on the newest snapshot if enough rows are new, then publish. Made for cron.

    python -m trainer.run --data DIR_OR_URI --base-model PATH --output-dir DIR_OR_URI \
        [--max-steps N] [--min-new-rows N] [--config FILE.yaml] [any WebrSFTConfig / PipelineArgs field]

Prints one summary line on stdout (`trainer: status=... key=value ...`); logs go to stderr. Exit codes: 0 published
or nothing to do, 1 unexpected error, 2 bad settings, 3 bad data, 4 training failed, 5 publishing failed,
6 the evaluation gate refused the candidate (kept in the work dir, nothing published), 75 another run holds
the lock. docs/trainer.md has the details.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from trainer.exceptions import EXIT_UNEXPECTED, EXIT_USAGE, TrainerConfigError, TrainerError

if TYPE_CHECKING:
    from transformers import HfArgumentParser

    from trainer.config import PipelineArgs
    from trainer.sft_config import WebrSFTConfig

log = logging.getLogger("trainer")


def make_parser() -> HfArgumentParser:
    """One parser over the pipeline options and the SFT config (imports trl, hence torch: about 4 s)."""
    from transformers import HfArgumentParser

    from trainer.config import PipelineArgs
    from trainer.sft_config import WebrSFTConfig

    class Parser(HfArgumentParser):
        def error(self, message: str) -> NoReturn:  # argparse would sys.exit(2) with no summary line
            raise TrainerConfigError(message)

    parser = Parser(
        (PipelineArgs, WebrSFTConfig),
        prog="python -m trainer.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", default=None, help="YAML file of settings (field names as keys); the command line overrides it."
    )
    return parser


def parse_args(argv: Sequence[str]) -> tuple[PipelineArgs, WebrSFTConfig]:
    """Command line plus optional `--config FILE.yaml`; an unknown key or an invalid value is an error."""
    parser = make_parser()
    args = list(argv)
    config_path = _pop_option(args, "--config")
    if config_path is not None:
        args = yaml_to_args(Path(config_path), parser) + args  # later occurrences win: the command line overrides
    try:
        pipeline, sft, _ = parser.parse_args_into_dataclasses(args=args)
    except ValueError as exc:  # unknown arguments and invalid values from the dataclasses' validators
        raise TrainerConfigError(str(exc)) from exc
    return pipeline, sft


def yaml_to_args(path: Path, parser: HfArgumentParser) -> list[str]:
    """A YAML mapping as command-line arguments, so the parser applies the same types, choices and validators."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TrainerConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TrainerConfigError(f"config {path} must be a YAML mapping of setting names to values")
    known = {a.dest for a in parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(data) - known)
    if unknown:
        hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise TrainerConfigError(f"unknown keys in config {path}: {said}")
    args: list[str] = []
    for key, value in data.items():
        if value is None:
            raise TrainerConfigError(f"config {path}: {key} is null; leave the key out to keep its default")
        args.append(f"--{key}")
        if isinstance(value, list):
            args.extend(str(v) for v in value)
        elif isinstance(value, dict):
            args.append(json.dumps(value))
        else:
            args.append(str(value).lower() if isinstance(value, bool) else str(value))
    return args


def _pop_option(args: list[str], name: str) -> str | None:
    """Remove `name VALUE` / `name=VALUE` from `args` (the last one wins) and return the value."""
    value, i = None, 0
    while i < len(args):
        if args[i] == name:
            if i + 1 >= len(args):
                raise TrainerConfigError(f"{name} needs a value")
            value = args[i + 1]
            del args[i : i + 2]
        elif args[i].startswith(name + "="):
            value = args.pop(i).split("=", 1)[1]
        else:
            i += 1
    return value


def setup_logging() -> None:
    """Timestamped log lines on stderr; libraries' progress bars off (stdout carries only the summary line)."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_warning()


def summary_line(status: str, exit_code: int, message: str, facts: dict[str, Any]) -> str:
    """`trainer: status=published exit=0 run_id=... message="..."`: one grep-able line for cron mail and logs."""
    fields = " ".join(f"{k}={v}" for k, v in facts.items() if v is not None)
    return f"trainer: status={status} exit={exit_code} {fields} message={json.dumps(message)}".replace("  ", " ")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, print the summary line, return the exit code (see the module docstring)."""
    setup_logging()
    try:
        pipeline, cfg = parse_args(sys.argv[1:] if argv is None else argv)
    except TrainerConfigError as exc:
        log.error("%s", exc)
        print(summary_line("error", EXIT_USAGE, str(exc), {}))
        return EXIT_USAGE
    _quiet_libraries()
    from trainer.config import TrainerEnvironment
    from trainer.pipeline import run_job

    try:
        result = run_job(pipeline, cfg, TrainerEnvironment.for_job(pipeline))
    except TrainerError as exc:
        log.error("%s", exc)
        status, code, message, facts = "error", exc.exit_code, str(exc), {}
    except Exception as exc:
        log.exception("unexpected failure")
        status, code, message, facts = "error", EXIT_UNEXPECTED, f"{type(exc).__name__}: {exc}", {}
    else:
        status, code, message, facts = result.status, result.exit_code, result.message, result.facts
    if cfg.process_index == 0:
        print(summary_line(status, code, message, facts), flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
