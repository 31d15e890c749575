"""`llm-tta`: an IQA backbone adapted at test time by LLM-TTA. The images given to one `score` call are
one test batch: an MLLM ranks them by p(good) after prompt 2 (Eq. 2), the norm layers adapt on the
top-k / bottom-k clusters and the adapted model predicts; the source weights are restored after the
batch. A batch smaller than 2k cannot form two clusters and gets source-model scores, as does a call
with `adapt=False` (the endpoint's per-request `adapt: false`). The knobs are `TTAParams`, the scoring
job's `adapt:` keys."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from rayiqa.config import InputConfig, MLLMConfig
from rayiqa.config.scorers import ScorerConfig
from rayiqa.config.tta import TTAParams
from rayiqa.scorers.base import Scorer, ScoreResult, register_scorer


class LLMTTAScorerConfig(TTAParams, ScorerConfig):
    """The backbone and adaptation knobs (`TTAParams`), the ranking MLLM, and whether to adapt at all."""

    name: ClassVar[str] = "llm-tta"
    ranker: MLLMConfig = Field(default_factory=MLLMConfig)  # reads p(good) after prompt 2 (Eq. 2)
    adapt: bool = True  # False: source-model scores only (no ranker call)

    @property
    def model_id(self) -> str:
        return f"llm-tta:{self.backbone}"


class LLMTTAScorer(Scorer):
    """Evidence per image: source and adapted scores, its cluster, p(good), the batch's final loss."""

    def __init__(self, config: LLMTTAScorerConfig, input_cfg: InputConfig) -> None:
        from rayiqa.methods import llm_tta
        from rayiqa.models.mllm import create_engine

        super().__init__(config, input_cfg)
        self.backbone = llm_tta.source_backbone(config)
        self.device = next(self.backbone.parameters()).device
        self.ranker = create_engine(config.ranker) if config.adapt else None

    def score_arrays(self, images: list[np.ndarray], *, adapt: bool = True) -> list[ScoreResult]:
        """The batch's adapted scores; `adapt=False`: the source model's, without a ranker call."""
        from rayiqa.methods import llm_tta

        cfg, n = self.config, len(images)
        if not n:
            return []
        x = llm_tta.to_batch_tensor(images, cfg.image_size).to(self.device)
        cluster, p_good, adapted, final_loss = [None] * n, [None] * n, None, None
        if adapt and self.ranker is not None and n >= 2 * cfg.k:
            ranking = llm_tta.prompt2_scores([self.ranker], images)
            res = llm_tta.adapt_and_predict(self.backbone, x, ranking, cfg)
            base, adapted, final_loss, p_good = res.base_scores, res.scores, res.final_loss, ranking.tolist()
            for side in ("high", "low"):
                for i in getattr(res.clusters, side):
                    cluster[i] = side
        else:
            base = llm_tta.predict(self.backbone, x)
        return [
            ScoreResult(float(base[i] if adapted is None else adapted[i]), {
                "base_score": float(base[i]),
                "adapted_score": None if adapted is None else float(adapted[i]),
                "adapted": adapted is not None,
                "batch_size": n,
                "cluster": cluster[i],
                "p_good": p_good[i],
                "final_loss": final_loss,
                "backbone": cfg.backbone,
                "weights": self.backbone.weights,
            })
            for i in range(n)
        ]


@register_scorer(LLMTTAScorerConfig)
def create_llm_tta(config: LLMTTAScorerConfig, input_cfg: InputConfig) -> LLMTTAScorer:
    return LLMTTAScorer(config, input_cfg)
