"""The `adapt:` section of the scoring job: LLM-TTA (or a baseline) as an actor-pool stage (configs/score.yaml)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayiqa.config.base import Section, StageConfig


class AdaptConfig(Section):
    """Test-time adaptation of an IQA backbone on batches of B images; `method: none` skips the stage."""

    method: Literal["none", "llm-tta", "tta-iqa", "fa-tta-iqa"] = "none"
    backbone: str = "tiny-cnn"  # a rayiqa.models.backbones name (tiny-cnn, tiny-vit, tiny-uiqa, uiqa-swin-t, pyiqa names)
    weights: str | None = None  # a state_dict file (.pt) of that backbone; None: the preset's own weights
    device: str = "auto"  # "auto" (cuda if the actor has a GPU), "cpu", "cuda", "cuda:N"
    image_size: int = Field(default=224, gt=0)  # images are resized to this square to form a batch tensor
    batch: int = Field(default=8, gt=0)  # B: images per adaptation batch
    k: int = Field(default=2, ge=2)  # cluster size: top-k and bottom-k of each batch
    tau: float = Field(default=0.1, gt=0)  # temperature of Eq. 3
    iterations: int = Field(default=10, ge=1)  # Adam steps per batch
    lr: float = Field(default=1e-3, gt=0)
    seed: int = 2021
    loss_form: Literal["paper", "tta-iqa"] = "paper"  # Eq. 3 as written, or TTA-IQA's code
    ranker: Literal["llm-iqa", "prompt2"] = "llm-iqa"  # llm-tta only: whose ranking forms the clusters
    ranker_models: list[int] | None = None  # indices into `mllms` ensembled as the ranker; None: all
    affinity_weights: str | None = None  # fa-tta-iqa: torchvision VGG16_Weights member; None: random-init
    stage: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=64))  # rows per actor call

    @model_validator(mode="after")
    def _sizes(self) -> "AdaptConfig":
        if self.batch < 2 * self.k:
            raise ValueError(f"batch ({self.batch}) must be at least 2*k ({2 * self.k})")
        if self.stage.batch_size < self.batch:
            raise ValueError(f"stage.batch_size ({self.stage.batch_size}) must be at least batch ({self.batch})")
        return self
