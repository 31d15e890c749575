"""The one image reader: a URI (local, file:// or s3://) -> RGB uint8 (H, W, 3) under a config's limits.

Bytes come through `rayiqa.io.fs` (the storage's retry setting) and `rayiqa.io.sources.read_bytes`,
pixels from `rayiqa.io.decode.decode_image`, so every caller (job, trainers, study, scorers) sees
the same pixels and the same error kinds (`ERROR_KINDS`). A permanent failure of the file is a
value (`try_read_rgb`) or an `ImageReadError` (`read_rgb`); a store that stays unreachable past
the SDK's retries raises `StoreUnavailable` from both.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from rayiqa.config import StorageConfig
from rayiqa.io.fs import resolve_fs
from rayiqa.io.sources import read_decoded


class ReadConfig(Protocol):
    """What the reader needs of a config: `InputConfig`, and the study's and trainers' data sections."""

    storage: StorageConfig
    max_bytes: int
    max_pixels: int


class ImageReadError(ValueError):
    """An image that cannot be read or decoded; `.kind` is one of ERROR_KINDS, the message names the URI."""

    def __init__(self, uri: str, kind: str, message: str) -> None:
        super().__init__(f"{uri}: {kind}: {message.removeprefix(f'{uri}: ')}")
        self.uri, self.kind = uri, kind


def try_read_rgb(uri: str, input_cfg: ReadConfig) -> tuple[np.ndarray | None, str | None, str | None]:
    """(image, None, None), or (None, error kind, message) for a file that cannot be read or decoded."""
    res = read_decoded(uri, *resolve_fs(uri, input_cfg.storage), input_cfg)
    return res.image, res.error_kind, res.error


def read_rgb(uri: str, input_cfg: ReadConfig) -> np.ndarray:
    """The image at `uri`; raises ImageReadError for a file that cannot be read or decoded."""
    image, kind, message = try_read_rgb(uri, input_cfg)
    if image is None:
        raise ImageReadError(uri, kind, message)
    return image
