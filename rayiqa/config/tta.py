"""LLM-TTA's parameters: `TTAParams` carries every knob of one adaptation (backbone, input size,
clusters, loss, optimiser), shared by the scoring job's `adapt:` section, the `llm-tta` scorer (which
Serve's llm-tta models wrap) and `rayiqa.methods.llm_tta`, so the same batch gets the same adapted scores from each."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from rayiqa.config.base import Section, StageConfig

LossForm = Literal["paper", "tta-iqa"]


class TTAParams(Section):
    """One adaptation's knobs (Section 4.1 defaults: Adam, lr 1e-3, 10 iterations, seed 2021).

    τ is not given in the paper; 0.1 is TTA-IQA's value for TReS and MUSIQ (it used 1 for MetaIQA).
    """

    backbone: str = "tiny-cnn"  # a rayiqa.models.backbones name (tiny-cnn, tiny-vit, tiny-uiqa, uiqa-swin-t, pyiqa names)
    weights: str | None = None  # a state_dict file (.pt) of that backbone; None: the preset's own weights
    device: str = "auto"  # "auto" (cuda when visible), "cpu", "cuda", "cuda:N"
    image_size: int = Field(default=224, gt=0)  # images are resized to this square to form a batch tensor
    k: int = Field(default=2, ge=2)  # cluster size: top-k and bottom-k of each batch
    tau: float = Field(default=0.1, gt=0)  # temperature of Eq. 3
    lr: float = Field(default=1e-3, gt=0)  # Adam's learning rate
    iterations: int = Field(default=10, ge=1)  # Adam steps per batch
    proj_dim: int = Field(default=256, ge=1)  # width of the frozen projection head Θp
    seed: int = 2021  # seeds Θp's random init
    loss_form: LossForm = "paper"  # Eq. 3 as written, or TTA-IQA's code

    @field_validator("image_size", "k", "tau", "lr", "iterations", "proj_dim", "loss_form", mode="wrap")
    @classmethod
    def _name_the_value(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """A bad knob's error says which knob got which value."""
        try:
            return handler(value)
        except ValidationError as e:
            raise ValueError(f"{info.field_name}={value!r}: {e.errors()[0]['msg']}") from None


class AdaptConfig(TTAParams):
    """The `adapt:` section of the scoring job: LLM-TTA (or a baseline) on batches of B images as an
    actor-pool stage (configs/score.yaml); `method: none` skips the stage."""

    method: Literal["none", "llm-tta", "tta-iqa", "fa-tta-iqa"] = "none"
    batch: int = Field(default=8, gt=0)  # B: images per adaptation batch
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
