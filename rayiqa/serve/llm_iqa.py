"""LLM-IQA behind Ray Serve: the scoring job's own stages (segment -> score per MLLM -> finalize) on
images that arrive over HTTP, batched across requests with `@serve.batch`."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from rayiqa.config.serve import LLMIQAModelConfig
from rayiqa.pipeline import stages
from rayiqa.serve.base import ScoreResult

EVIDENCE_COLUMNS = [f.name for f in stages.OUTPUT_SCHEMA if f.name not in ("path", "score")]


def image_rows(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Decoded images as the batch columns the pipeline stages read (what `decode_batch` produces)."""
    n = len(images)
    return {
        "path": stages.object_column([f"request:{i}" for i in range(n)]),
        "image": stages.object_column(images),
        "width": np.asarray([im.shape[1] for im in images], dtype=np.int32),
        "height": np.asarray([im.shape[0] for im in images], dtype=np.int32),
        "error_kind": stages.object_column([""] * n),
        "error": stages.object_column([""] * n),
        "boxes": stages.object_column([stages.NO_BOXES] * n),
        "areas": stages.object_column([np.zeros(0, np.int64)] * n),
        "masks": stages.object_column([np.zeros((0, 0), np.uint8)] * n),
    }


@serve.deployment
class LLMIQADeployment:
    """Mix-grained LLM-IQA scores (Section 3) with the evidence columns of the scoring job's output."""

    def __init__(self, cfg: LLMIQAModelConfig) -> None:
        from rayiqa.models.mllm.presets import resolve_model

        self.cfg = cfg
        self.segment = stages.SegmentStage(cfg.segmenter, cfg.method) if cfg.method.segmentation else None
        self.scorers = [stages.ScoreStage(m, cfg.method, k) for k, m in enumerate(cfg.mllms)]
        self.model_ids = [m.preset for m in cfg.mllms]
        self.weights = sorted({resolve_model(m.preset)[1] for m in cfg.mllms})
        self._score_batch.set_max_batch_size(cfg.deployment.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(cfg.deployment.batch_wait_timeout_s)

    def score_images(self, images: list[np.ndarray]) -> list[ScoreResult]:
        """Run the stages on one batch; a per-image model failure is that image's error, not the batch's."""
        batch = image_rows(images)
        if self.segment is not None:
            batch = self.segment(batch)
        for scorer in self.scorers:
            batch = scorer(batch)
        rows = stages.finalize(batch, self.model_ids, self.cfg.method).to_pylist()
        return [
            {"score": row["score"], "evidence": {c: row[c] for c in EVIDENCE_COLUMNS} | {"weights": self.weights}}
            for row in rows
        ]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        return await asyncio.to_thread(self.score_images, images)

    async def score(self, images: list[np.ndarray], options: dict[str, Any]) -> list[ScoreResult]:
        """One result per image, in order; images of concurrent requests share model forwards."""
        return list(await asyncio.gather(*(self._score_batch(im) for im in images)))
