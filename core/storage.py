"""Object storage through pyarrow's filesystems: a local path or `s3://bucket/prefix`.

Credentials come from the standard AWS chain (environment, config files, instance roles) that pyarrow's S3
client reads itself; the endpoint of an S3-compatible store (MinIO, Ceph, a test server) and the region are
`StorageSettings`, read from flags or the usual AWS variables by the settings layer and passed to `resolve`.

Every writer (the Parquet sink, the commit markers, the trainer's model store) writes through
`Location.publish`, the one way an object appears: whole or not at all, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import pyarrow as pa
from pyarrow import fs as pafs
from pydantic import BaseModel, ConfigDict, Field

from core.settings import Knob

TMP_PREFIX = ".tmp-"
"""Local temporaries are `.tmp-<random>-<final name>` beside their final name: hidden from readers, and
recognisable (with the name they were meant to have) when a writer killed before its rename left one."""
_CHUNK = 8 << 20


@dataclass(frozen=True, slots=True)
class Location:
    """A filesystem and a root path inside it (no scheme), e.g. (S3FileSystem, 'bucket/prefix')."""

    fs: pafs.FileSystem
    root: str
    uri: str

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root else "/".join(parts)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def publish(self, path: str, data: bytes | pa.Buffer | Path) -> int:
        """Make `data` (bytes, or a local file's content) appear at `path` whole, replacing what was there;
        returns the bytes written.

        Locally it is written to a temporary beside `path`, fsynced and renamed over it, and the directory is
        fsynced (offsets are committed once a file is published: it must survive a power loss, not only a kill).
        On an object store it is one PUT (or one multipart upload, visible only once completed). One gap is
        pyarrow's: it has no abort, and completes an upload whose stream is dropped, so a Python exception raised
        between the chunks of a local file streamed to S3 (Ctrl-C) leaves the part written so far there. A failed
        part upload fails the whole upload, and the sink and the markers write one buffer in one call; the model
        store writes the file that marks a run complete last."""
        target = path
        if self.is_local:
            parent, name = path.rsplit("/", 1)
            self.fs.create_dir(parent, recursive=True)
            target = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            with self.fs.open_output_stream(target) as out:
                if isinstance(data, Path):
                    with data.open("rb") as src:
                        while chunk := src.read(_CHUNK):
                            out.write(chunk)
                else:
                    out.write(data)
                size = out.tell()
            if self.is_local:
                _fsync(target)
                self.fs.move(target, path)
                _fsync(parent)
        except BaseException:
            if self.is_local and self.fs.get_file_info(target).type != pafs.FileType.NotFound:
                self.fs.delete_file(target)
            raise
        return size

    def read_bytes(self, path: str) -> bytes | None:
        """The whole content at `path`, or None when nothing is there."""
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None


class StorageSettings(BaseModel):
    """Where `s3://` URIs live; the AWS variables are read as the AWS tools read them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    s3_endpoint_url: Annotated[str | None, Knob(env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))] = Field(
        default=None, description="endpoint of an S3-compatible store (MinIO...); default: $AWS_ENDPOINT_URL_S3"
    )
    s3_region: Annotated[str | None, Knob(env=("AWS_REGION", "AWS_DEFAULT_REGION"))] = Field(
        default=None, description="region of the bucket (default: $AWS_REGION, else the AWS SDK's choice)"
    )

    def open(self, uri: str, *, create: bool = False) -> Location:
        """`resolve(uri)` with these settings."""
        return resolve(uri, s3_endpoint_url=self.s3_endpoint_url, region=self.s3_region, create=create)


def resolve(
    uri: str, *, s3_endpoint_url: str | None = None, region: str | None = None, create: bool = False
) -> Location:
    """Open `uri` (a local path, `file://` or `s3://`); `create` makes a local root directory."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        endpoint = s3_endpoint_url
        kwargs: dict[str, object] = {}
        if endpoint:
            ep = urlparse(endpoint)
            kwargs["endpoint_override"] = ep.netloc or ep.path
            kwargs["scheme"] = ep.scheme or "https"
        if region:
            kwargs["region"] = region
        s3 = pafs.S3FileSystem(**kwargs)  # type: ignore[arg-type]
        return Location(s3, f"{parsed.netloc}{parsed.path}".rstrip("/"), uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"unsupported output scheme {parsed.scheme!r} in {uri!r}: use a path or s3://")
    local = os.path.abspath(parsed.path if parsed.scheme == "file" else uri)
    if create:
        os.makedirs(local, exist_ok=True)
    return Location(pafs.LocalFileSystem(), local, uri)


def _fsync(path: str) -> None:
    """Flush a local file's or directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
