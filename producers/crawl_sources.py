"""Where `--watch` finds new crawl files: a local directory, or an S3 prefix.

A source lists the files ready to read, each under a stable key (the file's absolute path, or its `s3://` URI: what
progress and leases are recorded under), and makes one available as a local file for the reader, which maps it.
A local file is ready once its size and mtime held still between two polls and it is `settle_s` old; an S3 object
is ready as soon as it is listed (a PUT or multipart upload becomes visible whole). An S3 object is copied into the
state directory's spool while it is produced and removed afterwards.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from pyarrow import fs as pafs

from core.storage import Location, StorageSettings

CRAWL_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
_COPY_CHUNK = 8 << 20


class CrawlSource(Protocol):
    def ready(self) -> list[str]:
        """Keys of the files that may be read now, in name order."""

    def local(self, key: str) -> AbstractContextManager[Path]:
        """The file as a local path, for the duration of the `with` block."""


class LocalDirectory:
    def __init__(self, directory: Path, settle_s: float) -> None:
        self.directory = directory
        self.settle_s = settle_s
        self._seen: dict[Path, tuple[int, float]] = {}

    def ready(self) -> list[str]:
        """Files still being written are never read: a writer that names its output `*.tmp`/`*.open` and renames
        it is never seen early, and one that appends in place is seen only once it stopped growing."""
        ready: list[str] = []
        now = time.time()
        for path in sorted(self.directory.iterdir()):
            if not path.is_file() or not path.name.endswith(CRAWL_SUFFIXES):
                continue
            stat = path.stat()
            current = (stat.st_size, stat.st_mtime)
            if self._seen.get(path) == current and now - stat.st_mtime >= self.settle_s:
                ready.append(str(path.resolve()))
            self._seen[path] = current
        return ready

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        yield Path(key)


class S3Prefix:
    def __init__(self, uri: str, spool: Path, storage: StorageSettings) -> None:
        self.location: Location = storage.open(uri)
        self.spool = spool
        spool.mkdir(parents=True, exist_ok=True)

    def ready(self) -> list[str]:
        selector = pafs.FileSelector(self.location.root, recursive=True, allow_not_found=True)
        infos = self.location.fs.get_file_info(selector)
        names = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(CRAWL_SUFFIXES)]
        return [f"s3://{name}" for name in sorted(names)]

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        name = key.rsplit("/", 1)[-1]
        target = self.spool / f"{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}-{name}"
        partial = target.with_name(target.name + ".part")
        with self.location.fs.open_input_stream(key.removeprefix("s3://")) as src, open(partial, "wb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                dst.write(chunk)
        partial.rename(target)
        try:
            yield target
        finally:
            target.unlink(missing_ok=True)


def open_source(spec: str, state_dir: Path, settle_s: float, storage: StorageSettings) -> CrawlSource:
    if spec.startswith("s3://"):
        return S3Prefix(spec, state_dir / "spool", storage)
    return LocalDirectory(Path(spec), settle_s)
