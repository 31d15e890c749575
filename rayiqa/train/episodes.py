"""Training images for Ray Data loader tasks: read (local or s3://), decode, resize.

Apart from rayiqa.train.promptiqa and torch-free, so that a loader task's worker, and Ray Train's
dataset actors that unpickle the loader, do not import torch, timm and ray.train (~10 s per fresh
process on 2 cores).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from rayiqa.config import StorageConfig
from rayiqa.data.rows import DatasetError
from rayiqa.io.decode import decode_image, resize_batch
from rayiqa.io.fs import resolve_fs
from rayiqa.io.sources import read_bytes

MAX_IMAGE_BYTES = 100_000_000
MAX_IMAGE_PIXELS = 64_000_000


def load_images(uris: list[str], storage: StorageConfig, size: int) -> np.ndarray:
    """Read and decode training images (local or s3://) into a (N, 3, size, size) float batch; a bad file names itself."""
    decoded = []
    for uri in uris:
        fs, path = resolve_fs(uri, storage)
        data, _, message = read_bytes(uri, fs, path, MAX_IMAGE_BYTES)
        result = decode_image(data, MAX_IMAGE_PIXELS) if data is not None else None
        if result is None or not result.ok:
            raise DatasetError(f"training image {uri}: {message or result.error}")
        decoded.append(result.image)
    return resize_batch(decoded, size)


def load_episode(row: dict[str, Any], storage: dict, size: int) -> dict[str, Any]:
    """One episode row (image uris, scores) -> its decoded pixels (B, 3, size, size) as numpy."""
    pixels = load_images(list(row["images"]), StorageConfig(**storage), size)
    return {"dataset": row["dataset"], "pixels": pixels, "scores": np.asarray(row["scores"], dtype=np.float32)}
