"""The published models and the state beside them, on a local path or object storage.

Layout under `--output-dir`:
    <run id>/            config.json, model*.safetensors, tokenizer files, training_metadata.json
    latest               one line: the run id of the newest complete model
The `latest` run's metadata (its snapshot manifest) is the trainer's state: what was trained last. A run's
directory is complete before `latest` names it: locally it appears by one rename, on object storage the metadata
file goes up last; `latest` itself is replaced atomically (rename, or one PUT).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from pyarrow import fs as pafs

from streamer.storage import Location
from trainer.exceptions import PublishError, StateError

log = logging.getLogger(__name__)

LATEST = "latest"
METADATA = "training_metadata.json"
_CHUNK = 8 << 20


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
            if self.loc.is_local:
                self._publish_local(local_dir, run_id)
            else:
                self._publish_remote(local_dir, run_id)
            self._write_pointer(run_id)
        except OSError as exc:
            raise PublishError(f"publishing {run_id} to {self.loc.uri} failed: {exc}") from exc
        return self.run_uri(run_id)

    def _publish_local(self, local_dir: Path, run_id: str) -> None:
        root = Path(self.loc.root)
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{run_id}.partial-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(local_dir, staging)
            final = root / run_id
            if final.exists():  # left by a publish that died before moving `latest`; never pointed at
                shutil.rmtree(final)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _publish_remote(self, local_dir: Path, run_id: str) -> None:
        fs = self.loc.fs
        fs.delete_dir_contents(self.loc.path(run_id), missing_dir_ok=True)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == METADATA)  # the metadata last: it marks the directory complete
        try:
            for path in files:
                dest = self.loc.path(run_id, *path.relative_to(local_dir).parts)
                with path.open("rb") as src, fs.open_output_stream(dest) as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
        except OSError:
            fs.delete_dir_contents(self.loc.path(run_id), missing_dir_ok=True)
            raise

    def _write_pointer(self, run_id: str) -> None:
        data = f"{run_id}\n".encode()
        if self.loc.is_local:
            tmp = Path(self.loc.path(f".{LATEST}.{uuid.uuid4().hex[:8]}"))
            tmp.write_bytes(data)
            os.replace(tmp, self.loc.path(LATEST))
        else:
            with self.loc.fs.open_output_stream(self.loc.path(LATEST)) as out:
                out.write(data)
        log.info("latest -> %s", run_id)
