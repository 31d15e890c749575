"""`promptiqa`: a trained PromptIQA scoring under the requirement its image-score pair prompt (ISPP) states."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field, ValidationInfo, model_validator

from rayiqa.config import InputConfig, Section
from rayiqa.config.promptiqa import PromptIQAModelConfig
from rayiqa.config.scorers import ScorerConfig
from rayiqa.scorers.base import Scorer, ScoreResult, register_scorer


class ISPPItem(Section):
    """One image-score pair of PromptIQA's prompt."""

    path: str  # local path or s3:// URI (read with the job's input.storage)
    score: float = Field(ge=0, le=1)  # on the 0-1 scale the model was trained on (min-max normalised MOS or DMOS)


class PromptIQAScorerConfig(ScorerConfig):
    """A `rayiqa train promptiqa` model and the ISPP it scores under."""

    name: ClassVar[str] = "promptiqa"
    model: PromptIQAModelConfig = Field(default_factory=PromptIQAModelConfig)  # model.checkpoint is required
    ispp: list[ISPPItem] = Field(default_factory=list)  # the image-score pair prompt (paper: 10 pairs); required
    device: str = "cpu"

    @property
    def model_id(self) -> str:
        return f"promptiqa:{self.model.checkpoint}"

    @model_validator(mode="after")
    def _trained_and_prompted(self, info: ValidationInfo) -> "PromptIQAScorerConfig":
        endpoint = (info.context or {}).get("endpoint")  # there requests register requirements (ISPPs)
        if not endpoint and not (self.model.checkpoint and self.ispp):
            raise ValueError("promptiqa.model.checkpoint and promptiqa.ispp (>= 1 path/score) are required")
        return self


class PromptIQAScorer(Scorer):
    """An ISPP's assessment prompt F_AP is computed once (`prompt_features`); each batch is then one
    encoder pass (`features`) and one image-prompt fusion pass per prompt (`predict`). `score` uses the
    config's ISPP; evidence: its size."""

    def __init__(self, config: PromptIQAScorerConfig, input_cfg: InputConfig) -> None:
        from rayiqa.io.read import read_rgb
        from rayiqa.models.promptiqa import create_promptiqa

        super().__init__(config, input_cfg)
        self.model = create_promptiqa(config.model).to(config.device)
        try:
            ispp_images = [read_rgb(item.path, input_cfg) for item in config.ispp]
        except ValueError as exc:
            raise ValueError(f"promptiqa.ispp: {exc}") from exc
        self.prompt = self.prompt_features(ispp_images, [item.score for item in config.ispp]) if ispp_images else None

    def prompt_features(self, images: list[np.ndarray], scores: list[float]) -> Any:
        """F_AP (k x dim) of the ISPP (images[i], scores[i])."""
        import torch

        from rayiqa.models.promptiqa import to_batch

        with torch.no_grad():
            batch = to_batch(images, self.config.model.image_size).to(self.config.device)
            return self.model.ispp_features(batch, torch.tensor(scores, dtype=torch.float32, device=self.config.device))

    def features(self, images: list[np.ndarray]) -> Any:
        """V(I) of each image: one encoder pass."""
        import torch

        from rayiqa.models.promptiqa import to_batch

        with torch.no_grad():
            return self.model.encode(to_batch(images, self.config.model.image_size).to(self.config.device))

    def predict(self, features: Any, prompt: Any) -> list[float]:
        """Scores of encoded images under one assessment prompt F_AP."""
        import torch

        with torch.no_grad():
            return self.model.predict(features, prompt).cpu().tolist()

    def score_arrays(self, images: list[np.ndarray]) -> list[ScoreResult]:
        if self.prompt is None:
            raise ValueError("promptiqa: no ISPP to score under (set promptiqa.ispp)")
        if not images:
            return []
        scores = self.predict(self.features(images), self.prompt)
        return [ScoreResult(s, {"ispp_size": len(self.config.ispp)}) for s in scores]


@register_scorer(PromptIQAScorerConfig)
def create_promptiqa_scorer(config: PromptIQAScorerConfig, input_cfg: InputConfig) -> PromptIQAScorer:
    return PromptIQAScorer(config, input_cfg)
