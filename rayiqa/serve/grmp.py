"""GRMP-IQA served: a fine-tuned prompted CLIP scores images by p(high | x) of Eq. 2.

`load_grmp_scorer(checkpoint)` is the plain scorer (what `rayiqa score` plugs in); `GRMPDeployment`
wraps it as a Ray Serve deployment following `rayiqa.serve.base`, batching images across requests
with `@serve.batch`. A bad image (not H x W x 3 uint8) gives a result with `evidence.error` and no
score; the other images of the request are scored.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import ray.train
import torch
from PIL import Image
from ray import serve

from rayiqa.methods.grmp_iqa import p_high
from rayiqa.serve.base import ScoreResult
from rayiqa.train.grmp import load_model

GRMPScorer = Callable[[list[np.ndarray]], list[ScoreResult]]


def image_error(image: Any) -> str | None:
    """Why `image` cannot be scored, or None for an H x W x 3 uint8 array."""
    if not isinstance(image, np.ndarray):
        return f"image must be a numpy array, got {type(image).__name__}"
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        return f"image must be a non-empty H x W x 3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
    return None


def load_grmp_scorer(checkpoint: str, device: str = "cpu") -> GRMPScorer:
    """A callable scoring decoded RGB images with the model in `checkpoint` (a folder or a storage URI).

    Each result: score = p(high | x) in [0, 1]; evidence = both scaled cosine logits and the weights tag.
    """
    with ray.train.Checkpoint(checkpoint).as_directory() as directory:
        model, _ = load_model(directory)
    model = model.to(device).eval()
    transform = model.image_transform(is_train=False)

    @torch.no_grad()
    def score(images: list[np.ndarray]) -> list[ScoreResult]:
        errors = [image_error(image) for image in images]
        good = [i for i, error in enumerate(errors) if error is None]
        results: list[ScoreResult] = [{"evidence": {"error": error}} for error in errors]
        if good:
            batch = torch.stack([transform(Image.fromarray(images[i])) for i in good]).to(device)
            logits = model(batch)
            for i, row, p in zip(good, logits.tolist(), p_high(logits).tolist()):
                results[i] = {"score": p, "evidence": {"logit_high": row[0], "logit_low": row[1],
                                                       "weights": model.weights}}
        return results

    return score


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class GRMPDeployment:
    """One GRMP-IQA model behind `score(images, options)`; images are batched across concurrent requests."""

    def __init__(self, checkpoint: str, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.01) -> None:
        self._scorer = load_grmp_scorer(checkpoint)
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def score(self, images: list[np.ndarray], options: dict[str, Any]) -> list[ScoreResult]:
        """One ScoreResult per image, in order; `options` are unused (GRMP-IQA has no per-request knobs)."""
        return list(await asyncio.gather(*(self._score_batch(image) for image in images)))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        return self._scorer(images)
