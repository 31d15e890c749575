"""The closed set of per-image error kinds: a bad input becomes a row with one of these, never a crash."""
from __future__ import annotations

ERROR_KINDS: dict[str, str] = {
    "read_error": "the file could not be read (missing, permission denied, storage error)",
    "too_many_bytes": "the file is larger than input.max_bytes; it was not read",
    "empty": "the file has zero bytes",
    "not_an_image": "no image format recognises the bytes (text, corrupt header, ...)",
    "truncated": "the header parsed but the pixel data is cut short or corrupt",
    "too_large": "the header's width x height exceeds input.max_pixels (decompression bomb guard)",
    "unsupported": "a recognised format or mode this Pillow build cannot decode or convert to RGB",
}
