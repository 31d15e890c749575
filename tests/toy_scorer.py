"""A toy scorer in one module (what a new scorer needs): the mean pixel value in [0, 1] plus an offset."""
from typing import ClassVar

import numpy as np

from rayiqa.config import InputConfig
from rayiqa.config.scorers import ScorerConfig
from rayiqa.scorers import Scorer, ScoreResult, register_scorer


class ToyConfig(ScorerConfig):
    name: ClassVar[str] = "toy"
    offset: float = 0.0  # added to every score


class ToyScorer(Scorer):
    def score_arrays(self, images: list[np.ndarray]) -> list[ScoreResult]:
        means = [float(np.mean(im)) / 255 for im in images]
        return [ScoreResult(m + self.config.offset, {"mean": m}) for m in means]


@register_scorer(ToyConfig)
def create_toy(config: ToyConfig, input_cfg: InputConfig) -> ToyScorer:
    return ToyScorer(config, input_cfg)
