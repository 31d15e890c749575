"""`promptiqa`: a trained PromptIQA scoring under the requirement its image-score pair prompt (ISPP) states."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

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
    def _trained_and_prompted(self) -> "PromptIQAScorerConfig":
        if not (self.model.checkpoint and self.ispp):
            raise ValueError("promptiqa.model.checkpoint and promptiqa.ispp (>= 1 path/score) are required")
        return self


class PromptIQAScorer(Scorer):
    """The ISPP's assessment prompt F_AP is computed once; each batch is then one encoder pass and one
    image-prompt fusion pass. Evidence: the ISPP's size."""

    def __init__(self, config: PromptIQAScorerConfig, input_cfg: InputConfig) -> None:
        import torch

        from rayiqa.models.promptiqa import create_promptiqa, to_batch
        from rayiqa.scorers.base import read_rgb

        super().__init__(config, input_cfg)
        self.model = create_promptiqa(config.model).to(config.device)
        try:
            ispp_images = [read_rgb(item.path, input_cfg) for item in config.ispp]
        except ValueError as exc:
            raise ValueError(f"promptiqa.ispp: {exc}") from exc
        ispp_scores = torch.tensor([item.score for item in config.ispp], dtype=torch.float32, device=config.device)
        with torch.no_grad():
            self.prompt = self.model.ispp_features(to_batch(ispp_images, config.model.image_size).to(config.device), ispp_scores)

    def score_arrays(self, images: list[np.ndarray]) -> list[ScoreResult]:
        import torch

        from rayiqa.models.promptiqa import to_batch

        if not images:
            return []
        with torch.no_grad():
            features = self.model.encode(to_batch(images, self.config.model.image_size).to(self.config.device))
            scores = self.model.predict(features, self.prompt).cpu().tolist()
        return [ScoreResult(s, {"ispp_size": len(self.config.ispp)}) for s in scores]


@register_scorer(PromptIQAScorerConfig)
def create_promptiqa_scorer(config: PromptIQAScorerConfig, input_cfg: InputConfig) -> PromptIQAScorer:
    return PromptIQAScorer(config, input_cfg)
