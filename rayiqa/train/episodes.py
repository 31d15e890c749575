"""Training images for Ray Data loader tasks: read (local or s3://), decode, resize.

Apart from rayiqa.train.promptiqa and torch-free, so that a loader task's worker, and Ray Train's
dataset actors that unpickle the loader, do not import torch, timm and ray.train (~10 s per fresh
process on 2 cores).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from rayiqa.config import InputConfig, StorageConfig
from rayiqa.data.rows import DatasetError
from rayiqa.io.decode import resize_batch
from rayiqa.io.read import ImageReadError, read_rgb


def load_images(uris: list[str], storage: StorageConfig, size: int) -> np.ndarray:
    """Read and decode training images (local or s3://, the scoring job's input limits) into a
    (N, 3, size, size) float batch; a bad file names itself."""
    limits = InputConfig(storage=storage)
    try:
        return resize_batch([read_rgb(uri, limits) for uri in uris], size)
    except ImageReadError as e:
        raise DatasetError(f"training image {e}") from e


def load_episode(row: dict[str, Any], storage: dict, size: int) -> dict[str, Any]:
    """One episode row (image uris, scores) -> its decoded pixels (B, 3, size, size) as numpy."""
    pixels = load_images(list(row["images"]), StorageConfig(**storage), size)
    return {"dataset": row["dataset"], "pixels": pixels, "scores": np.asarray(row["scores"], dtype=np.float32)}
