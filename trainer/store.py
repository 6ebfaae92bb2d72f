"""The published models and the state beside them, on a local path or object storage.

Layout under `--output-dir`:
    <run id>/            config.json, model*.safetensors, tokenizer files, training_metadata.json
    latest               one line: the run id of the newest complete model
The `latest` run's metadata (its snapshot manifest) is the trainer's state: what was trained last. A run's
directory is complete before `latest` names it: each file is published whole (`Location.publish`), the metadata
file last; `latest` itself is replaced the same way (a rename locally, one PUT on object storage).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from pyarrow import fs as pafs

from core.storage import Location
from trainer.exceptions import PublishError, StateError

log = logging.getLogger(__name__)

LATEST = "latest"
METADATA = "training_metadata.json"


class ModelStore:
    """Reads the state and publishes runs at one output location."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc

    def run_uri(self, run_id: str) -> str:
        return f"{self.loc.uri.rstrip('/')}/{run_id}"

    def latest_run_id(self) -> str | None:
        """The run `latest` names, or None before the first publish."""
        info = self.loc.fs.get_file_info(self.loc.path(LATEST))
        if info.type == pafs.FileType.NotFound:
            return None
        try:
            with self.loc.fs.open_input_stream(self.loc.path(LATEST)) as f:
                run_id = f.read().decode().strip()
        except OSError as exc:
            raise StateError(f"cannot read {self.loc.uri}/{LATEST}: {exc}") from exc
        if not run_id or "/" in run_id:
            raise StateError(f"{self.loc.uri}/{LATEST} holds {run_id!r}, not a run id")
        return run_id

    def read_metadata(self, run_id: str) -> dict[str, object]:
        path = self.loc.path(run_id, METADATA)
        try:
            with self.loc.fs.open_input_stream(path) as f:
                return json.loads(f.read())
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read the metadata of run {run_id} ({path}): {exc}") from exc

    def latest(self) -> tuple[str, dict[str, object]] | None:
        """(run id, metadata) of the last published model: the state the next run compares against."""
        run_id = self.latest_run_id()
        return None if run_id is None else (run_id, self.read_metadata(run_id))

    def fetch(self, run_id: str, cache: Path) -> Path:
        """A local directory holding the run's model: itself when local, else a download into `cache`."""
        if self.loc.is_local:
            return Path(self.loc.path(run_id))
        dest = cache / run_id
        if (dest / METADATA).exists():
            return dest
        tmp = cache / f".{run_id}.{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        pafs.copy_files(
            self.loc.path(run_id),
            str(tmp),
            source_filesystem=self.loc.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        return dest

    def publish(self, local_dir: Path, run_id: str) -> str:
        """Upload a finished model directory, then point `latest` at it. Nothing is left half-published."""
        for needed in ("config.json", METADATA):
            if not (local_dir / needed).is_file():
                raise PublishError(f"refusing to publish {local_dir}: no {needed}")
        try:
            self._upload(local_dir, run_id)
            self.loc.publish(self.loc.path(LATEST), f"{run_id}\n".encode())
        except OSError as exc:
            raise PublishError(f"publishing {run_id} to {self.loc.uri} failed: {exc}") from exc
        log.info("latest -> %s", run_id)
        return self.run_uri(run_id)

    def _upload(self, local_dir: Path, run_id: str) -> None:
        """Every file of the run published on its own, the metadata last: a run directory without it (left by a
        publish that died) is never named by `latest`, and the next publish of that run id starts it afresh."""
        self.loc.fs.delete_dir_contents(self.loc.path(run_id), missing_dir_ok=True)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == METADATA)
        try:
            for path in files:
                self.loc.publish(self.loc.path(run_id, *path.relative_to(local_dir).parts), path)
        except OSError:
            self.loc.fs.delete_dir_contents(self.loc.path(run_id), missing_dir_ok=True)
            raise
