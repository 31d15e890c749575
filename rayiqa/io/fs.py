"""URIs -> filesystems: a local path, `file://` or `s3://bucket/key` becomes a filesystem + path.

Two views of the same store, built from one set of resolved options:
- `resolve_fs` gives pyarrow's native `S3FileSystem` (or `LocalFileSystem`) for reading bytes.
  It is what Ray Data builds itself for `s3://` paths: C++ I/O that releases the GIL, picklable
  into Ray tasks, with the AWS SDK's own retry strategy (`storage.retry_attempts`), and it talks
  to moto/MinIO through `endpoint_override` + `scheme`.
- `resolve_fsspec` gives fsspec's `LocalFileSystem` / `s3fs.S3FileSystem` for listing, because
  pyarrow has no glob and fsspec's `glob`/`find` do `*`, `**` and `?` the same way on both stores.

Options come from the `StorageConfig`, else from the environment (`AWS_ENDPOINT_URL_S3`,
`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_DEFAULT_REGION`; keys: both libraries read
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` and ~/.aws themselves), and both
views retry a request `storage.retry_attempts` times.

The dataset layer reads annotation files through `dataset_fs` (`open_uri`, `exists`, `glob`): the
fsspec view for local and s3:// roots, fsspec's own filesystem for any other URI (memory://, gs://).
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
import pyarrow.fs as pafs
from fsspec.core import url_to_fs

from rayiqa.config import StorageConfig

S3_SCHEMES = ("s3", "s3a")
Storage = StorageConfig | None  # a dataset read's store options; None: defaults and the environment


@dataclass(frozen=True)
class S3Options:
    """Resolved S3 connection options (config first, then environment)."""

    endpoint_url: str | None
    region: str | None
    key: str | None
    secret: str | None
    anon: bool
    retry_attempts: int  # per request, AWS "standard" retry mode: throttling/5xx/network, exponential backoff


def s3_options(storage: StorageConfig) -> S3Options:
    """Fill the unset `StorageConfig` fields from the AWS environment variables."""
    env = os.environ
    return S3Options(
        endpoint_url=storage.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        region=storage.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        key=storage.key,
        secret=storage.secret,
        anon=storage.anon,
        retry_attempts=storage.retry_attempts,
    )


def split_uri(uri: str) -> tuple[str, str]:
    """`uri` -> (scheme, path): ("s3", "bucket/key") or ("file", absolute local path).

    Parsed by hand rather than with `urlsplit`, which would cut glob `?` and `#` out of keys.
    """
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower() if sep else ""
    if scheme in S3_SCHEMES:
        path = rest.strip("/")
        if not path:
            raise ValueError(f"{uri!r}: an s3 URI needs a bucket (s3://bucket/key)")
        return "s3", path
    if scheme == "file":
        return "file", os.path.abspath("/" + rest.lstrip("/"))
    if sep:
        raise ValueError(f"{uri!r}: unsupported URI scheme {scheme!r}; use a local path, file:// or s3://")
    return "file", os.path.abspath(os.path.expanduser(uri))


def join_uri(scheme: str, path: str) -> str:
    """Inverse of `split_uri`: local paths stay plain, s3 paths get their `s3://`."""
    return f"s3://{path}" if scheme == "s3" else path


def join_path(root: str, *names: str) -> str:
    """Join a local path, a bucket/key path or a URI with child names ('/' separators)."""
    return posixpath.join(root, *names)


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, memory://...)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() != "file"


def absolute_root(root: str) -> str:
    """A dataset root as an absolute local path or a URI without trailing slash."""
    if is_remote(root):
        return root.rstrip("/")
    if root.startswith("file://"):
        root = root[len("file://") :]
    return os.path.abspath(os.path.expanduser(root))


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's `S3FileSystem` that keeps its retry budget when pickled into Ray tasks.

    pyarrow's own `__reduce__` drops `retry_strategy` (apache/arrow#47348), so every Ray Data read,
    write and checkpoint task would fall back to the default 3 attempts; this one rebuilds itself.
    """

    def __init__(self, retry_attempts: int, **kwargs) -> None:
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=retry_attempts), **kwargs)
        self._init_args = (retry_attempts, kwargs)

    def __reduce__(self):
        return _rebuild_s3, self._init_args


def _rebuild_s3(retry_attempts: int, kwargs: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(retry_attempts, **kwargs)


def _pyarrow_s3(opts: S3Options) -> RetryingS3FileSystem:
    kwargs: dict = {}
    if opts.endpoint_url:
        endpoint = urlsplit(opts.endpoint_url if "://" in opts.endpoint_url else f"https://{opts.endpoint_url}")
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
    return RetryingS3FileSystem(
        opts.retry_attempts, access_key=opts.key, secret_key=opts.secret, anonymous=opts.anon, region=opts.region, **kwargs
    )


def resolve_fs(uri: str, storage: StorageConfig) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for `uri` (local, file:// or s3://).

    Building one is cheap (~2 ms) but not free: resolve once per batch or actor, not per file.
    """
    scheme, path = split_uri(uri)
    if scheme == "s3":
        return _pyarrow_s3(s3_options(storage)), path
    return pafs.LocalFileSystem(), path


def resolve_fsspec(
    uri: str, storage: StorageConfig, timeout_s: float | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """An fsspec filesystem (for `find`/`glob` listings, and the endpoint's fetches: s3fs runs every
    request on one asyncio loop, so stalled ones hold no thread of the others) and the path inside it
    for `uri`; `timeout_s` bounds each S3 connect and read."""
    scheme, path = split_uri(uri)
    if scheme != "s3":
        return fsspec.filesystem("file"), path
    opts = s3_options(storage)
    import s3fs  # here, not at the top: only S3 listings need it (0.6 s per fresh Ray worker)

    fs = s3fs.S3FileSystem(
        key=opts.key,
        secret=opts.secret,
        anon=opts.anon,
        endpoint_url=opts.endpoint_url,
        client_kwargs={"region_name": opts.region} if opts.region else None,
        config_kwargs={"retries": {"max_attempts": opts.retry_attempts, "mode": "standard"}}
        | ({"connect_timeout": timeout_s, "read_timeout": timeout_s} if timeout_s else {}),
        use_listings_cache=False,  # a listing must see objects written since the last one
    )
    return fs, path


def dataset_fs(uri: str, storage: Storage = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem holding a dataset file and the path inside it: `resolve_fsspec` for local
    and s3:// URIs (the storage's endpoint, keys and retry setting), fsspec's defaults for other schemes."""
    if is_remote(uri) and uri.partition("://")[0].lower() not in S3_SCHEMES:
        return url_to_fs(uri)
    return resolve_fsspec(uri, storage or StorageConfig())


def open_uri(uri: str, storage: Storage = None, mode: str = "rb") -> IO[Any]:
    """Open one dataset file for reading or writing."""
    fs, path = dataset_fs(uri, storage)
    return fs.open(path, mode)


def exists(uri: str, storage: Storage = None) -> bool:
    """Whether `uri` exists."""
    fs, path = dataset_fs(uri, storage)
    return fs.exists(path)


def glob(pattern: str, storage: Storage = None) -> list[str]:
    """Sorted URIs matching a glob pattern, in the same form (local path or scheme://) as the pattern."""
    fs, path = dataset_fs(pattern, storage)
    matches = sorted(fs.glob(path))
    return [fs.unstrip_protocol(m) for m in matches] if is_remote(pattern) else matches
