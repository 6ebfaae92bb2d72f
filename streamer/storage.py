"""Object storage through pyarrow's filesystems: a local path or `s3://bucket/prefix`.

Credentials come from the standard AWS chain (environment, config files, instance roles) that pyarrow's S3
client reads itself; only the endpoint of an S3-compatible store (MinIO, Ceph, a test server) is ours to pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

from pyarrow import fs as pafs


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


def resolve(uri: str, *, s3_endpoint_url: str | None = None, create: bool = False) -> Location:
    """Open `uri` (a local path, `file://` or `s3://`); `create` makes a local root directory."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        endpoint = s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, object] = {}
        if endpoint:
            ep = urlparse(endpoint)
            kwargs["endpoint_override"] = ep.netloc or ep.path
            kwargs["scheme"] = ep.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
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
