"""The contract between the HTTP ingress and the per-model Ray Serve deployments.

Each model has one deployment class (`serve/llm_iqa.py`, `serve/promptiqa.py`, `serve/grmp.py`,
`serve/tta.py`) with an async `score(images, options)` taking decoded RGB uint8 images and returning
one result dict per image (`ScoreResult.as_dict()`: `score` and its `evidence`). The ingress
(`serve/app.py`) holds a handle per model name and calls `handle.score.remote(images, options)`.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from rayiqa.config.serve import DeploymentConfig
from rayiqa.scorers import Scorer


ResultDict = dict[str, Any]  # the JSON form of one image's result, `rayiqa.scorers.ScoreResult.as_dict()`


class UnknownRequirement(KeyError):
    """A PromptIQA requirement name that was never registered (the ingress answers 404)."""


class ScorerDeployment:
    """A deployment around one scorer object: the images of concurrent requests are batched
    (`@serve.batch`, sized by the model's `deployment` section) into one `score_arrays` call."""

    def __init__(self, scorer: Scorer, deployment: DeploymentConfig) -> None:
        self.scorer = scorer
        self._score_batch.set_max_batch_size(deployment.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(deployment.batch_wait_timeout_s)

    @serve.batch
    async def _score_batch(self, images: list[np.ndarray]) -> list[ResultDict]:
        return [r.as_dict() for r in await asyncio.to_thread(self.scorer.score_arrays, images)]

    async def score(self, images: list[np.ndarray], options: dict[str, Any]) -> list[ResultDict]:
        """One result per image, in order; images of concurrent requests share model forwards."""
        return list(await asyncio.gather(*(self._score_batch(im) for im in images)))
