"""Where the dataset layer touches storage: one `filesystem()` for local paths and s3:// URIs.

Every annotation read goes through `filesystem()`, so switching to `rayiqa.io.fs.resolve_fsspec`
is a change of this one function. Image paths are only joined, never opened, here.
"""
from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from rayiqa.config import StorageConfig

Storage = StorageConfig | Mapping[str, Any] | None


def storage_options(storage: Storage) -> dict[str, Any]:
    """fsspec/s3fs keyword options from a `StorageConfig`, a plain mapping, or None."""
    if storage is None:
        return {}
    if not isinstance(storage, StorageConfig):
        return dict(storage)
    options: dict[str, Any] = {"anon": storage.anon}
    if storage.key:
        options["key"] = storage.key
    if storage.secret:
        options["secret"] = storage.secret
    if storage.endpoint_url:
        options["endpoint_url"] = storage.endpoint_url
    if storage.region:
        options["client_kwargs"] = {"region_name": storage.region}
    return options


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, memory://...)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() != "file"


def filesystem(uri: str, storage: Storage = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem holding `uri` and the path inside it (s3 options only for remote URIs)."""
    options = storage_options(storage) if is_remote(uri) else {}
    return url_to_fs(uri, **options)


def absolute_root(root: str) -> str:
    """A dataset root as an absolute local path or a URI without trailing slash."""
    if is_remote(root):
        return root.rstrip("/")
    if root.startswith("file://"):
        root = root[len("file://") :]
    return os.path.abspath(os.path.expanduser(root))


def join(root: str, *parts: str) -> str:
    """Join path parts under a root made by `absolute_root` (POSIX separators for URIs)."""
    return posixpath.join(root, *parts) if is_remote(root) else os.path.join(root, *parts)


def open_uri(uri: str, storage: Storage = None, mode: str = "rb") -> IO[Any]:
    """Open one file for reading or writing."""
    fs, path = filesystem(uri, storage)
    return fs.open(path, mode)


def exists(uri: str, storage: Storage = None) -> bool:
    """Whether `uri` exists."""
    fs, path = filesystem(uri, storage)
    return fs.exists(path)


def glob(pattern: str, storage: Storage = None) -> list[str]:
    """Sorted URIs matching a glob pattern, in the same form (local path or scheme://) as the pattern."""
    fs, path = filesystem(pattern, storage)
    matches = sorted(fs.glob(path))
    return [fs.unstrip_protocol(m) for m in matches] if is_remote(pattern) else matches
