"""`rayiqa train tiny-iqa`: a small Qwen2.5-VL taught to answer rayiqa's own quality prompts.

`configs/train-tiny-iqa.yaml` documents every key.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayiqa.config.base import RayConfig, Section

TRAIN_TYPES = ["gaussian_blur", "motion_blur", "gaussian_noise", "jpeg", "contrast", "pixelation"]
SPATIAL_MERGE = 2  # Qwen2.5-VL merges 2 x 2 patches into one token


class TinyShapeConfig(Section):
    """The model's size: the `tiny` preset's config (tokenizer, chat template, processor) at this shape."""

    hidden_size: int = Field(default=96, gt=0)  # language model width (head_dim stays 32)
    layers: int = Field(default=3, gt=0)  # language model decoder layers
    vision_hidden_size: int = Field(default=96, gt=0)  # vision tower width (head_dim stays 32)
    vision_depth: int = Field(default=3, gt=0)  # vision tower blocks; the last one uses full attention
    patch_size: int = Field(default=16, ge=4)  # vision patch side, px; 16 holds whole 8 px JPEG blocks (Qwen2.5-VL: 14)
    patch_init: Literal["dct", "random"] = "dct"  # the patch embedding's start: a DCT basis or random weights

    @property
    def grid(self) -> int:
        """Side of one merged vision token, px: the processor resizes images to whole tokens."""
        return self.patch_size * SPATIAL_MERGE

    @model_validator(mode="after")
    def _head_dim_32(self) -> "TinyShapeConfig":
        for key in ("hidden_size", "vision_hidden_size"):
            if getattr(self, key) % 32:
                raise ValueError(f"{key} must be a multiple of 32 (head_dim 32), got {getattr(self, key)}")
        return self


class TinyDataConfig(Section):
    """Training rows: random crops of packaged photographs or dead-leaves images, graded distortions, GMSD labels."""

    train_photos: list[str] = Field(default_factory=lambda: [
        "clock", "text", "grass", "gravel", "cell", "hubble_deep_field", "retina", "grace_hopper", "motorcycle"])
    holdout_photos: list[str] = Field(default_factory=lambda: ["camera", "coins", "brick", "immunohistochemistry"])
    types: list[str] = Field(default_factory=lambda: list(TRAIN_TYPES), min_length=1)  # rayiqa.data.distortions names
    type_weights: dict[str, float] = Field(default_factory=dict)  # relative draw weight of a type (unlisted: 1)
    rows: int = Field(default=8000, gt=0)  # rows per run; each holds a pristine image and `versions` copies of it
    versions: int = Field(default=3, ge=1)  # distorted copies per row
    dead_leaves: float = Field(default=0.5, ge=0, le=1)  # share of rows whose pristine image is a dead-leaves image
    defocus: float = Field(default=0.3, ge=0, le=1)  # share of pristine images given a defocused background
    off_grid: float = Field(default=0.7, ge=0, le=1)  # share of rows left off the token grid: the processor resizes them
    side_range: tuple[int, int] = (112, 252)  # long side of a crop, px (on-grid rows: sides cut to whole tokens)
    gmsd_ceiling: float = Field(default=0.3, gt=0)  # q = 1 - GMSD / ceiling, clipped to [0, 1] (per image and per token)
    tie_margin: float = Field(default=0.08, gt=0)  # double stimulus: |q_a - q_b| below this leans to "comparable"
    holdout_long_side: int = Field(default=384, gt=0)  # held-out photos are resized to this, like the samples
    holdout_levels: int = Field(default=3, ge=2)  # levels per type in the held-out table

    @model_validator(mode="after")
    def _disjoint(self) -> "TinyDataConfig":
        shared = sorted(set(self.train_photos) & set(self.holdout_photos))
        if shared:
            raise ValueError(f"train_photos and holdout_photos share {shared}")
        return self

    @model_validator(mode="after")
    def _type_weights(self) -> "TinyDataConfig":
        unknown = set(self.type_weights) - set(self.types)
        if unknown or any(w < 0 for w in self.type_weights.values()) or not any(self.type_mix().values()):
            raise ValueError(f"type_weights must give types among {self.types} weights >= 0, not all 0; "
                             f"got {self.type_weights}")
        return self

    def type_mix(self) -> dict[str, float]:
        """Each type's draw weight."""
        return {t: self.type_weights.get(t, 1.0) for t in self.types}


class VisionPhaseConfig(Section):
    """The first epochs: the vision tower alone, with training-only heads (local quality, type)."""

    epochs: int = Field(default=3, ge=0)  # 0: skip the phase
    lr: float = Field(default=1e-3, gt=0)  # AdamW peak learning rate
    local_weight: float = Field(default=2.0, ge=0)  # MSE of each token's predicted local quality (its cell's GMSD label)
    rank_weight: float = Field(default=1.0, ge=0)  # pairwise logistic loss ranking a row's images by their label
    batch_rank_weight: float = Field(default=1.0, ge=0)  # the same loss over all the batch's images (across content)
    type_weight: float = Field(default=0.5, ge=0)  # cross-entropy naming the distortion type (or none)
    rank_margin: float = Field(default=0.03, ge=0)  # label gap below which a pair is not ranked


class PromptMixConfig(Section):
    """Relative weight of each prompt family in the training stream (0 leaves a family out)."""

    llm_iqa_word7: float = Field(default=4.0, ge=0)  # LLM-IQA's 7-level word standard (the scoring job's default)
    llm_iqa_variants: float = Field(default=2.0, ge=0)  # K = 3/5/9 and the number/sentence standards
    tta_good_poor: float = Field(default=1.5, ge=0)  # LLM-TTA's prompt 2: " good" vs " poor" (Eq. 2)
    study_single: float = Field(default=1.5, ge=0)  # the study's single-stimulus standard prompt, NR and FR
    study_double: float = Field(default=1.5, ge=0)  # the study's double-stimulus standard prompt, NR and FR


class TinyIQATrainConfig(Section):
    """`rayiqa train tiny-iqa CONFIG`: vision epochs, then soft-label cross-entropy on level tokens; DDP on Ray Train."""

    model: TinyShapeConfig = Field(default_factory=TinyShapeConfig)
    data: TinyDataConfig = Field(default_factory=TinyDataConfig)
    vision: VisionPhaseConfig = Field(default_factory=VisionPhaseConfig)
    prompts: PromptMixConfig = Field(default_factory=PromptMixConfig)
    min_pixels: int = Field(default=3136, gt=0)  # processor resize bounds, as in the scoring configs
    max_pixels: int = Field(default=200704, gt=0)
    epochs: int = Field(default=2, gt=0)  # prompt epochs, after the vision phase's
    batch_size: int = Field(default=8, gt=0)  # rows per worker per step
    lr: float = Field(default=1e-3, gt=0)  # AdamW peak learning rate of the prompt phase
    clip_norm: float = Field(default=1.0, gt=0)  # gradient norm clip, both phases
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=50, ge=0)  # linear warm-up, then cosine decay to 0 (each phase)
    max_steps_per_epoch: int | None = Field(default=None, gt=0)  # cap steps per worker per epoch (smoke runs)
    holdout_eval: bool = True  # score the held-out photos after each epoch (rank 0)
    num_workers: int = Field(default=2, gt=0)  # DDP workers (gloo)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    threads_per_worker: int = Field(default=1, gt=0)  # torch intra-op threads per worker
    loader_cpus: float = Field(default=1.0, gt=0)  # CPUs per Ray Data task making rows
    storage_path: str = "out/tiny-iqa/runs"  # local folder for checkpoints and results
    name: str = "tiny-iqa"  # run name; a rerun with the same storage_path + name resumes from its latest checkpoint
    export_dir: str | None = "out/tiny-iqa/model"  # the final model as a plain Hugging Face folder (null: none)
    max_failures: int = Field(default=2, ge=-1)  # Ray Train worker-failure retries (-1: unlimited)
    keep_checkpoints: int = Field(default=2, gt=0)
    seed: int = 0  # model init, rows, prompt draws
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _pixels(self) -> "TinyIQATrainConfig":
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self
