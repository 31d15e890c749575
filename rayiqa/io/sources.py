"""Which images to score (`list_inputs`) and reading one of them (`read_bytes`, `read_decoded`).

A permanent failure of one file is a value (an error kind and a message); a transient store failure
raises `StoreUnavailable` (see `rayiqa.io.errors`).

`input.uri` may be a folder or s3 prefix (listed recursively), a glob (local or s3; `*`, `**`, `?`),
a single file, a `.parquet`/`.csv`/`.txt` list of URIs, or `builtin:samples`. Listings keep only
`input.extensions`; list files are taken as given, so a listed non-image becomes an error row
later instead of vanishing. Relative entries of a list file are resolved against its folder.
"""
from __future__ import annotations

import io
import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayiqa.config import InputConfig
from rayiqa.io.decode import DecodeResult, decode_image
from rayiqa.io.errors import InputError, StoreUnavailable, is_permanent
from rayiqa.io.fs import join_uri, resolve_fs, resolve_fsspec, split_uri
from rayiqa.io.samples import SAMPLES_URI, samples_dir

LIST_SUFFIXES = (".parquet", ".csv", ".txt")
GLOB_CHARS = frozenset("*?[")


def _suffix(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _wanted(extensions: list[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _list_column(table: pa.Table, cfg: InputConfig) -> list[str]:
    if cfg.list_column not in table.column_names:
        raise InputError(
            f"input.list_column={cfg.list_column!r} is not a column of input.uri={cfg.uri!r}; "
            f"columns: {table.column_names}"
        )
    return [str(v) for v in table.column(cfg.list_column).to_pylist() if v is not None]


def _read_list(uri: str, cfg: InputConfig) -> list[str]:
    """The URIs named by a Parquet/CSV column or by the lines of a text file, made absolute."""
    fs, path = resolve_fs(uri, cfg.storage)
    suffix = _suffix(path)
    if suffix == ".parquet":
        with fs.open_input_file(path) as f:
            entries = _list_column(pq.read_table(f), cfg)
    else:
        with fs.open_input_stream(path) as f:
            raw = f.read()
        if suffix == ".csv":
            options = pacsv.ConvertOptions(column_types={cfg.list_column: pa.string()})
            entries = _list_column(pacsv.read_csv(io.BytesIO(raw), convert_options=options), cfg)
        else:
            entries = raw.decode("utf-8-sig").splitlines()
    scheme, _ = split_uri(uri)
    folder = posixpath.dirname(path)
    return [_absolute(e.strip(), scheme, folder) for e in entries if e.strip()]


def _absolute(entry: str, scheme: str, folder: str) -> str:
    if "://" in entry or posixpath.isabs(entry):
        return entry
    return join_uri(scheme, posixpath.normpath(posixpath.join(folder, entry)))


def _listing(uri: str, cfg: InputConfig) -> list[str]:
    """Recursive listing of a folder/prefix or glob, filtered by extension; a single file as given."""
    fs, path = resolve_fsspec(uri, cfg.storage)
    scheme, _ = split_uri(uri)
    if GLOB_CHARS & set(path):
        found = [p for p, info in fs.glob(path, detail=True).items() if info["type"] == "file"]
    elif not fs.exists(path):
        raise InputError(f"input.uri={cfg.uri!r}: no such folder, file, bucket or prefix")
    elif fs.isfile(path):
        return [join_uri(scheme, path)]
    else:
        found = fs.find(path)
    wanted = _wanted(cfg.extensions)
    return [join_uri(scheme, p) for p in found if _suffix(p) in wanted]


def list_inputs(cfg: InputConfig) -> list[str]:
    """The sorted, de-duplicated URIs to score (first `cfg.limit`).

    Raises InputError naming input.uri (and input.storage for a store or credential failure) if the
    listing fails or finds nothing.
    """
    if cfg.uri.startswith("builtin:") and cfg.uri != SAMPLES_URI:
        raise InputError(f"input.uri={cfg.uri!r}: the only builtin input is {SAMPLES_URI!r}")
    uri = str(samples_dir()) if cfg.uri == SAMPLES_URI else cfg.uri
    try:
        uris = _read_list(uri, cfg) if _suffix(uri) in LIST_SUFFIXES else _listing(uri, cfg)
    except InputError:
        raise
    except ValueError as e:  # a malformed URI
        raise InputError(f"input.uri={cfg.uri!r}: {e}") from e
    except Exception as e:  # OSError, Arrow, botocore (missing credentials, unreachable endpoint), decoding
        where = " (check input.storage and the AWS_* credentials)" if split_uri(uri)[0] == "s3" else ""
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"input.uri={cfg.uri!r}: cannot list inputs{where}: {type(e).__name__}: {first}") from e
    uris = sorted(set(uris))
    if not uris:
        raise InputError(f"input.uri={cfg.uri!r}: no images found (input.extensions={cfg.extensions})")
    return uris[: cfg.limit] if cfg.limit else uris


def read_bytes(
    uri: str, fs: pafs.FileSystem, path: str, max_bytes: int
) -> tuple[bytes | None, str | None, str | None]:
    """(data, None, None), or (None, "read_error" | "too_many_bytes", message) for a permanent failure
    of this file (not found, access denied, not a file, too large).

    Raises StoreUnavailable for a transient one (connection, timeout, throttling, 5xx) once the
    filesystem's own retries (`storage.retry_attempts`) are spent. The size is checked from the open
    file's metadata before any byte is read, so a huge object costs one request, not a download.
    """
    try:
        with fs.open_input_file(path) as f:
            size = f.size()
            if size > max_bytes:
                return None, "too_many_bytes", f"{uri}: {size} bytes > max_bytes {max_bytes}"
            return f.read(), None, None
    except (OSError, pa.ArrowException) as e:
        message = f"{uri}: {type(e).__name__}: {e}"
        if is_permanent(e):
            return None, "read_error", message
        raise StoreUnavailable(message) from e


def read_decoded(uri: str, fs: pafs.FileSystem, path: str, input_cfg: InputConfig) -> DecodeResult:
    """Read + decode under the input limits; a permanent failure is a DecodeResult with its error kind
    (and the header's size when the bytes were read). Raises StoreUnavailable like `read_bytes`."""
    data, kind, msg = read_bytes(uri, fs, path, input_cfg.max_bytes)
    if data is None:
        return DecodeResult(image=None, error_kind=kind, error=msg)
    return decode_image(data, input_cfg.max_pixels)


def read_image(uri: str, fs: pafs.FileSystem, path: str, input_cfg: InputConfig):
    """(RGB uint8 image, None, None), or (None, error kind, message): `read_decoded` without the size."""
    res = read_decoded(uri, fs, path, input_cfg)
    return res.image, res.error_kind, res.error
