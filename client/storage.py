"""Object storage for batch jobs: ``s3://bucket/prefix`` locations through ``pyarrow.fs``.

A local path never comes here: the batch code keeps its own folder handling (``os.walk``, atomic
rename, ``flock``), so local jobs pay nothing for this layer. Only a location that starts with
``s3://`` is an ``S3Path``, and only S3 jobs import pyarrow.

``pyarrow.fs.S3FileSystem`` (Arrow's C++ S3 client) rather than ``s3fs``: it needs no botocore
(whose ``python-dateutil<3`` pin fights this project's environment) and keeps no listing cache that
could hide another writer's objects. Where the endpoint is not AWS (MinIO, Ceph, a local test
server) ``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL`` names it (``http://HOST:PORT`` or
``https://...``); credentials and region come from the usual AWS variables and files.

An object appears whole or not at all: a PUT that dies half-way leaves nothing (an unfinished
multipart upload is not an object), so S3 outputs need no temporary name and rename.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .errors import LangcolorError

log = logging.getLogger(__name__)

SCHEME = "s3://"
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the AWS CLI's and SDKs' names, most specific first
INSTALL_HINT = "pip install 'langcolor[scale]'"


def is_s3(location: Any) -> bool:
    """True for an ``s3://`` location (a str; a ``Path`` would have folded the double slash)."""
    return isinstance(location, str) and location.startswith(SCHEME)


class StorageError(LangcolorError):
    """An object store refused or failed a request; the message names the object."""


@dataclass(frozen=True, order=True)
class S3Path:
    """``s3://bucket/key``: a prefix (a "folder") or one object. ``key`` has no leading or trailing
    slash, and no empty, ``.`` or ``..`` segment: it means one place only."""

    bucket: str
    key: str = ""

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket or self.bucket in (".", ".."):
            raise LangcolorError(f"{SCHEME}{self.bucket}: not a bucket name")
        check_relative_key(self.key, f"{SCHEME}{self.bucket}/{self.key}", allow_empty=True)

    @classmethod
    def parse(cls, uri: str) -> "S3Path":
        if not is_s3(uri):
            raise LangcolorError(f"{uri!r} is not an {SCHEME} location")
        bucket, _, key = uri[len(SCHEME):].partition("/")
        return cls(bucket, key.rstrip("/"))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    @property
    def arrow_path(self) -> str:  # pyarrow.fs names an object bucket/key
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def parent(self) -> "S3Path":
        return S3Path(self.bucket, str(PurePosixPath(self.key).parent).strip(".")) if self.key else self

    def child(self, rel: str) -> "S3Path":
        check_relative_key(rel, f"{self} + {rel!r}")
        return S3Path(self.bucket, f"{self.key}/{rel}" if self.key else rel)

    def contains(self, other: "S3Path") -> bool:
        """``other`` is this prefix or lies under it (segment-wise: s3://b/ab is not under s3://b/a)."""
        if other.bucket != self.bucket:
            return False
        return not self.key or other.key == self.key or other.key.startswith(self.key + "/")

    def relative(self, other: "S3Path") -> str:
        assert self.contains(other) and other != self, (self, other)
        return other.key[len(self.key) + 1:] if self.key else other.key


def check_relative_key(rel: str, where: str, allow_empty: bool = False) -> None:
    """Refuse a key part that could mean another place: ``..``, ``.``, empty segments, a NUL."""
    if not rel:
        if allow_empty:
            return
        raise LangcolorError(f"{where}: empty path")
    if "\x00" in rel:
        raise LangcolorError(f"{where}: contains a NUL byte")
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise LangcolorError(f"{where}: a key with an empty, '.' or '..' segment (or a leading '/') is refused")


def endpoint_from_env(environ: dict | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return next((env[name] for name in ENDPOINT_ENV if env.get(name)), None)


class S3Store:
    """The few object operations a batch needs, on ``pyarrow.fs.S3FileSystem``; errors name the object."""

    def __init__(self, endpoint: str | None = None, region: str | None = None):
        try:
            from pyarrow import fs
        except ImportError as e:
            raise LangcolorError(f"s3:// locations need pyarrow: {INSTALL_HINT}") from e
        self._fs_module = fs
        endpoint = endpoint or endpoint_from_env()
        kwargs: dict[str, Any] = {}
        if endpoint:
            scheme, sep, rest = endpoint.partition("://")
            if not sep or scheme not in ("http", "https"):
                raise LangcolorError(f"S3 endpoint {endpoint!r}: give it as http://HOST:PORT or https://HOST[:PORT]")
            kwargs.update(endpoint_override=rest.rstrip("/"), scheme=scheme)
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        self.endpoint = endpoint
        self.fs = fs.S3FileSystem(**kwargs)

    def __reduce__(self):  # a Ray task or a thread pool gets a fresh client with the same settings
        return (S3Store, (self.endpoint,))

    def _fail(self, what: str, where: S3Path, e: Exception) -> StorageError:
        return StorageError(f"{what} {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def list(self, prefix: S3Path) -> dict[str, int]:
        """Every object under ``prefix`` (recursively): key relative to it -> size in bytes."""
        fs = self._fs_module
        try:
            infos = self.fs.get_file_info(fs.FileSelector(prefix.arrow_path, recursive=True, allow_not_found=True))
        except OSError as e:
            raise self._fail("cannot list", prefix, e) from e
        base = prefix.arrow_path + "/"
        return {info.path[len(base):]: int(info.size) for info in infos
                if info.type == fs.FileType.File and info.path.startswith(base)}

    def size(self, path: S3Path) -> int | None:
        try:
            info = self.fs.get_file_info(path.arrow_path)
        except OSError as e:
            raise self._fail("cannot look up", path, e) from e
        return int(info.size) if info.type == self._fs_module.FileType.File else None

    def read(self, path: S3Path) -> bytes:
        try:
            with self.fs.open_input_stream(path.arrow_path) as f:
                return f.read()
        except FileNotFoundError as e:
            raise StorageError(f"{path} does not exist") from e
        except OSError as e:
            raise self._fail("cannot read", path, e) from e

    def write(self, path: S3Path, data: bytes) -> None:
        """One object, whole or not at all (see the module docstring)."""
        try:
            with self.fs.open_output_stream(path.arrow_path) as f:
                f.write(data)
        except OSError as e:
            raise self._fail("cannot write", path, e) from e

    def delete(self, path: S3Path) -> None:
        try:
            self.fs.delete_file(path.arrow_path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail("cannot delete", path, e) from e

    def bucket_exists(self, path: S3Path) -> bool:
        try:
            return self.fs.get_file_info(path.bucket).type == self._fs_module.FileType.Directory
        except OSError as e:
            raise self._fail("cannot reach bucket of", path, e) from e
