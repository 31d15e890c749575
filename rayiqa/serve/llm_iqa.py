"""LLM-IQA behind Ray Serve: the `llm-iqa` scorer (crops, every MLLM, the ensemble) on images that
arrive over HTTP, batched across requests."""
from __future__ import annotations

from ray import serve

from rayiqa.config.scorers import scorer_config
from rayiqa.config.serve import LLMIQAModelConfig
from rayiqa.scorers import build_scorer
from rayiqa.serve.base import ScorerDeployment


@serve.deployment
class LLMIQADeployment(ScorerDeployment):
    """Mix-grained LLM-IQA scores (Section 3) with their evidence (crops, level probabilities, weights)."""

    def __init__(self, cfg: LLMIQAModelConfig) -> None:
        config = scorer_config("llm-iqa", cfg.model_dump(include={"mllms", "segmenter", "method"}))
        super().__init__(build_scorer(config), cfg.deployment)
