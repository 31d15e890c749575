"""What can go wrong with an input, and which failures are final.

A permanent, per-image failure (the closed set `ERROR_KINDS`) becomes that image's error row and the
job goes on. A transient one (the store unreachable, a timeout, throttling, a 5xx answer) raises
`StoreUnavailable` after the storage SDK's own retries, so that Ray Data retries the task and, if the
store stays down, the run stops with one message and a re-run resumes those images.
"""
from __future__ import annotations

import re

ERROR_KINDS: dict[str, str] = {
    "read_error": "the file could not be read: missing, access denied, or not a file",
    "too_many_bytes": "the file is larger than input.max_bytes; it was not read",
    "empty": "the file has zero bytes",
    "not_an_image": "no image format recognises the bytes (text, corrupt header, ...)",
    "truncated": "the header parsed but the pixel data is cut short or corrupt",
    "too_large": "the header's width x height exceeds input.max_pixels (decompression bomb guard)",
    "unsupported": "a recognised format or mode this Pillow build cannot decode or convert to RGB",
}

# A storage error whose text says it is about this one object (pyarrow's S3 errors carry the AWS error
# name): retrying cannot help. FileNotFoundError / PermissionError / IsADirectoryError are permanent too.
PERMANENT_STORAGE_ERRORS = re.compile(
    r"ACCESS_DENIED|NO_SUCH_KEY|NO_SUCH_BUCKET|RESOURCE_NOT_FOUND|INVALID_OBJECT_STATE|HTTP status 40[34]\b"
    r"|Not a regular file|is a directory|Path does not exist"
)
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class StoreUnavailable(OSError):
    """The input store failed transiently past the SDK's retries (connection, timeout, throttling, 5xx)."""


class InputError(ValueError):
    """The inputs cannot be listed (a missing folder, no images, a store or credential failure);
    the message names input.uri or input.storage."""


class OutputError(ValueError):
    """output.uri cannot be used: not a folder, not writable, or its store not reachable."""


class StorageError(RuntimeError):
    """A store kept failing past its retry budget mid-run; the message names the store and the error."""


def is_permanent(exc: BaseException) -> bool:
    """Whether a storage error is about the object itself (not found, access denied, not a file)."""
    return isinstance(exc, PERMANENT_OS_ERRORS) or bool(PERMANENT_STORAGE_ERRORS.search(str(exc)))
