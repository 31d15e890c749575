"""The contract between the HTTP ingress and the per-model Ray Serve deployments.

A registered scorer is served by `ScorerDeployment`; PromptIQA (requirements registered by requests,
`serve/promptiqa.py`) and the TTA backbone (`serve/tta.py`) have their own. Each has an async
`score(images, options)` taking decoded RGB uint8 images and returning one result dict per image
(`ScoreResult.as_dict()`: `score` and its `evidence`). The ingress (`serve/app.py`) holds a handle
per model name and calls `handle.score.remote(images, options)`.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from rayiqa.config.serve import ScorerModelConfig
from rayiqa.scorers import build_scorer


ResultDict = dict[str, Any]  # the JSON form of one image's result, `rayiqa.scorers.ScoreResult.as_dict()`


class UnknownRequirement(KeyError):
    """A PromptIQA requirement name that was never registered (the ingress answers 404)."""


@serve.deployment
class ScorerDeployment:
    """One registered scorer per replica: the images of concurrent requests are batched (`@serve.batch`,
    sized by the model's `deployment` section) into one `score_arrays` call."""

    def __init__(self, cfg: ScorerModelConfig) -> None:
        self.scorer = build_scorer(cfg.scorer)
        self._score_batch.set_max_batch_size(cfg.deployment.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(cfg.deployment.batch_wait_timeout_s)

    @serve.batch  # sized in __init__
    async def _score_batch(self, images: list[np.ndarray]) -> list[ResultDict]:
        return [r.as_dict() for r in await asyncio.to_thread(self.scorer.score_arrays, images)]

    async def score(self, images: list[np.ndarray], options: dict[str, Any]) -> list[ResultDict]:
        """One result per image, in order; images of concurrent requests share model forwards."""
        return list(await asyncio.gather(*(self._score_batch(im) for im in images)))
