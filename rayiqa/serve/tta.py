"""An IQA backbone behind Ray Serve with LLM-TTA: images of concurrent requests form a test batch
(`@serve.batch`), an MLLM ranks it by p(good) after prompt 2 (Eq. 2), the norm layers adapt on its
top-k/bottom-k clusters (`adapt_and_predict`) and the adapted model predicts; the source weights are
restored after every batch. A batch smaller than 2k cannot form two clusters and gets source-model
scores. Knobs (`TTAParams`), batch tensor and ranking are the scoring job's own, so the endpoint and
the job give one batch the same scores.

The adaptation is batch-level by design of the method: an image's adapted score depends on the
other images of its batch, which may come from other requests.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from rayiqa.config.serve import TTAModelConfig
from rayiqa.methods import llm_tta
from rayiqa.serve.base import ResultDict as ScoreResult


@serve.deployment
class TTADeployment:
    """Scores from one backbone; `options["adapt"]` (default from config) picks adapted or source scores."""

    def __init__(self, cfg: TTAModelConfig) -> None:
        from rayiqa.models.mllm import create_engine

        self.cfg = cfg
        self.backbone = llm_tta.source_backbone(cfg)
        self.device = next(self.backbone.parameters()).device
        self.ranker = create_engine(cfg.ranker) if cfg.adapt else None
        self._score_batch.set_max_batch_size(cfg.deployment.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(cfg.deployment.batch_wait_timeout_s)

    def score_images(self, images: list[np.ndarray]) -> list[ScoreResult]:
        """Source and (when the batch allows) adapted scores for one batch, with the evidence."""
        x = llm_tta.to_batch_tensor(images, self.cfg.image_size).to(self.device)
        n = len(images)
        evidence: dict[str, list] = {"cluster": [None] * n, "p_good": [None] * n}
        if self.ranker is not None and n >= 2 * self.cfg.k:
            p_good = llm_tta.prompt2_scores([self.ranker], images)
            res = llm_tta.adapt_and_predict(self.backbone, x, p_good, self.cfg)
            base, adapted = res.base_scores, res.scores
            for i in res.clusters.high:
                evidence["cluster"][i] = "high"
            for i in res.clusters.low:
                evidence["cluster"][i] = "low"
            evidence["p_good"] = p_good.tolist()
            final_loss: float | None = res.final_loss
        else:
            base = llm_tta.predict(self.backbone, x)
            adapted, final_loss = None, None
        return [
            {
                "score": float(base[i] if adapted is None else adapted[i]),
                "evidence": {
                    "base_score": float(base[i]),
                    "adapted_score": None if adapted is None else float(adapted[i]),
                    "adapted": adapted is not None,
                    "batch_size": n,
                    "cluster": evidence["cluster"][i],
                    "p_good": evidence["p_good"][i],
                    "final_loss": final_loss,
                    "backbone": self.cfg.backbone,
                    "weights": self.backbone.weights,
                },
            }
            for i in range(n)
        ]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        return await asyncio.to_thread(self.score_images, images)

    async def score(self, images: list[np.ndarray], options: dict[str, Any]) -> list[ScoreResult]:
        """One result per image; with `options["adapt"] is False` the source model's score."""
        results = await asyncio.gather(*(self._score_batch(im) for im in images))
        if options.get("adapt", True):
            return list(results)
        return [{"score": r["evidence"]["base_score"], "evidence": r["evidence"]} for r in results]
