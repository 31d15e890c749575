"""The PromptIQA Ray Serve deployment: images scored under a named requirement (an ISPP).

`register_requirement(name, images, scores)` computes the ISPP's assessment-prompt feature F_AP
once; it is kept in a small named actor shared by all replicas (so any replica can score under a
requirement another registered) and cached in each replica. `score(images, options)` looks the
requirement up (`options["requirement"]`, `UnknownRequirement` if never registered) and scores the
images through a `@serve.batch` queue, so concurrent requests share forwards.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from rayiqa.config.serve import ScorerModelConfig
from rayiqa.scorers import build_scorer
from rayiqa.scorers.base import rgb_error
from rayiqa.serve.base import ResultDict, UnknownRequirement

STORE_NAMESPACE = "rayiqa"


@ray.remote(num_cpus=0)
class RequirementStore:
    """Name -> F_AP (k x dim) and k, shared by the replicas of one PromptIQA deployment."""

    def __init__(self) -> None:
        self.features: dict[str, tuple[np.ndarray, int]] = {}

    def put(self, name: str, features: np.ndarray, k: int) -> None:
        self.features[name] = (features, k)

    def get(self, name: str) -> tuple[np.ndarray, int] | None:
        return self.features.get(name)

    def names(self) -> list[str]:
        return sorted(self.features)


@serve.deployment
class PromptIQADeployment:
    """The `promptiqa` scorer per replica; requirements registered by name, images batched per forward."""

    def __init__(self, cfg: ScorerModelConfig) -> None:
        self.scorer = build_scorer(cfg.scorer)
        context = serve.get_replica_context()  # one store per application and model
        self.store = RequirementStore.options(
            name=f"{context.app_name}-{context.deployment}-requirements", namespace=STORE_NAMESPACE,
            get_if_exists=True, lifetime="detached",
        ).remote()
        self.cache: dict[str, tuple[torch.Tensor, int]] = {}
        self._score_batch.set_max_batch_size(cfg.deployment.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(cfg.deployment.batch_wait_timeout_s)

    async def register_requirement(self, name: str, images: list[np.ndarray], scores: list[float]) -> dict[str, Any]:
        """Compute and store F_AP of the ISPP (images[i], scores[i]); re-registering a name replaces it."""
        if not name:
            raise ValueError("requirement name must be a non-empty string")
        if len(images) != len(scores) or not images:
            raise ValueError(f"requirement {name!r}: {len(images)} images but {len(scores)} scores (need >= 1 pair)")
        for i, image in enumerate(images):
            problem = rgb_error(image)
            if problem:
                raise ValueError(f"requirement {name!r}: image {i}: {problem}")
        features = self.scorer.prompt_features(images, scores).cpu()
        self.cache[name] = (features, len(images))
        await self.store.put.remote(name, features.numpy(), len(images))
        return {"name": name, "k": len(images)}

    async def list_requirements(self) -> list[str]:
        return await self.store.names.remote()

    async def _requirement(self, name: Any) -> tuple[torch.Tensor, int]:
        if name not in self.cache:
            stored = await self.store.get.remote(name) if isinstance(name, str) else None
            if stored is None:
                raise UnknownRequirement(name)
            self.cache[name] = (torch.from_numpy(stored[0]), stored[1])
        return self.cache[name]

    async def score(self, images: list[np.ndarray], options: dict[str, Any]) -> list[ResultDict]:
        """One result per image under options["requirement"]; a malformed image gets an error, not a crash."""
        name = options.get("requirement")
        await self._requirement(name)
        return list(await asyncio.gather(*(self._score_one(image, name) for image in images)))

    async def _score_one(self, image: np.ndarray, name: str) -> ResultDict:
        problem = rgb_error(image)
        if problem:
            return {"evidence": {"requirement": name, "error": problem}}
        return await self._score_batch((image, name))

    @serve.batch  # sized in __init__ from the model's deployment section
    async def _score_batch(self, items: list[tuple[np.ndarray, str]]) -> list[ResultDict]:
        """One encoder pass over the batch, then one fusion pass per requirement present in it."""
        names = [name for _, name in items]
        scores = [0.0] * len(items)
        features = self.scorer.features([image for image, _ in items])
        device = features.device
        for name in set(names):
            rows = [i for i, n in enumerate(names) if n == name]
            for i, s in zip(rows, self.scorer.predict(features[rows], self.cache[name][0].to(device))):
                scores[i] = s
        return [{"score": float(s), "evidence": {"requirement": n, "ispp_size": self.cache[n][1]}}
                for s, n in zip(scores, names)]
