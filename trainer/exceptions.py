"""Errors the trainer raises on purpose; each maps to one exit code so cron and monitoring can tell them apart."""

from __future__ import annotations

from core.exceptions import PipelineError

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_TRAINING = 4
EXIT_PUBLISH = 5
EXIT_REJECTED = 6  # the evaluation gate refused the candidate: nothing published, `latest` unchanged
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock, try again later


class TrainerError(PipelineError):
    """Root of the trainer's errors; `exit_code` is what `python -m trainer.run` exits with."""

    exit_code = EXIT_UNEXPECTED


class TrainerConfigError(TrainerError):
    """A setting is invalid or unknown (a YAML typo included)."""

    exit_code = EXIT_USAGE


class DataError(TrainerError):
    """The snapshot cannot be trained on: empty, a corrupt file, or no valid row left."""

    exit_code = EXIT_DATA


class EmptySnapshot(DataError):
    """No complete Parquet file (or no row) under the data root."""


class DataFileError(DataError):
    """A data file is unreadable or has the wrong shape; names the file and pyarrow's reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"bad data file {path}: {reason}")
        self.path = path
        self.reason = reason


class StateError(TrainerError):
    """The state beside the models (the `latest` pointer or its metadata) is unreadable."""

    exit_code = EXIT_PUBLISH


class TrainingFailed(TrainerError):
    """SFT itself failed; the checkpoints stay in the work dir for the next run to resume."""

    exit_code = EXIT_TRAINING


class PublishError(TrainerError):
    """Uploading the model or moving the pointer failed; `latest` still names the previous model."""

    exit_code = EXIT_PUBLISH


class LockHeld(TrainerError):
    """Another live run holds the work dir's lock (cron fired again while it trains)."""

    exit_code = EXIT_LOCKED
