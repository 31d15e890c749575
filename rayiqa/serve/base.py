"""The contract between the HTTP ingress and the per-model Ray Serve deployments.

A registered scorer is served by `ScorerDeployment`; PromptIQA (requirements registered by requests,
`serve/promptiqa.py`) has its own. Each has an async
`score(images, options)` taking decoded RGB uint8 images and returning one result dict per image
(`ScoreResult.as_dict()`: `score` and its `evidence`). The ingress (`serve/app.py`) holds a handle
per model name and calls `handle.score.remote(images, options)`.
"""
from __future__ import annotations

import asyncio
import inspect
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
    sized by the model's `deployment` section) into one `score_arrays` call per set of call options
    (the scorer's keyword-only arguments, e.g. llm-tta's `adapt`) that the batch's requests carry."""

    def __init__(self, cfg: ScorerModelConfig) -> None:
        self.scorer = build_scorer(cfg.scorer)
        params = inspect.signature(self.scorer.score_arrays).parameters.values()
        self.call_options = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        self._score_batch.set_max_batch_size(cfg.deployment.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(cfg.deployment.batch_wait_timeout_s)

    def score_images(self, images: list[np.ndarray], options: list[dict[str, Any]] | None = None) -> list[ResultDict]:
        """One batch's results: one scorer call per distinct set of call options among its images
        (`options[i]`: image i's request options; those the scorer does not take are dropped)."""
        groups: dict[frozenset, list[int]] = {}
        for i, opts in enumerate(options or [{}] * len(images)):
            groups.setdefault(frozenset((k, v) for k, v in opts.items() if k in self.call_options), []).append(i)
        results: list[ResultDict] = [{}] * len(images)
        for own, idx in groups.items():
            for i, result in zip(idx, self.scorer.score_arrays([images[i] for i in idx], **dict(own))):
                results[i] = result.as_dict()
        return results

    @serve.batch  # sized in __init__
    async def _score_batch(self, images: list[np.ndarray], options: list[dict[str, Any]]) -> list[ResultDict]:
        return await asyncio.to_thread(self.score_images, images, options)

    async def score(self, images: list[np.ndarray], options: dict[str, Any]) -> list[ResultDict]:
        """One result per image, in order; images of concurrent requests share model forwards."""
        return list(await asyncio.gather(*(self._score_batch(im, options) for im in images)))
