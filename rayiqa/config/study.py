"""The MLLM prompting study's config (`rayiqa eval study`, configs/study.yaml)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayiqa.config.base import RayConfig, Section, StageConfig, StorageConfig
from rayiqa.config.score import MLLMConfig

STUDY_SYSTEMS = tuple(
    f"{s}-{p}" for s in ("single", "double", "multiple") for p in ("standard", "in_context", "chain_of_thought")
)


class StudyDataConfig(Section):
    """Which images are judged and what the human (or pseudo) score of each is."""

    dataset: str = "samples"  # "samples" (bundled photos) or a rayiqa.data registry name
    root: str | None = None  # registry datasets: folder or s3:// prefix holding the official files
    label: str = "ssim"  # samples: labels.csv column used as pseudo-MOS (higher = better)
    limit: int | None = Field(default=None, gt=0)  # keep the first N test images (smoke runs)
    max_pixels: int = Field(default=64_000_000, gt=0)  # decompression-bomb limit per image
    max_bytes: int = Field(default=100_000_000, gt=0)  # larger files fail their requests
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _root_for_registry(self) -> "StudyDataConfig":
        if self.dataset != "samples" and not self.root:
            raise ValueError(f"data.root is required for registry dataset {self.dataset!r}")
        return self


class SubsetConfig(Section):
    """Difficult-sample selection, Eq. (5) (NR form): judge only the top-N difficult images."""

    n: int | None = Field(default=None, gt=0)  # None: all images
    expert_label: str = "psnr"  # label column used as the expert model's prediction q_w
    sigma_label: str | None = None  # label column with the score std; None: sigma = 0
    clip_model: str = "tiny"  # open_clip model name for the diversity features; "tiny" = random weights
    clip_pretrained: str | None = None  # open_clip pretrained tag or checkpoint file
    lam: float = Field(default=0.01, ge=0)  # lambda
    epsilon: float = Field(default=1.0, gt=0)


class DesignConfig(Section):
    """The systems to run and how requests are drawn (the reference code's NR designs by default)."""

    systems: list[str] = Field(default_factory=lambda: list(STUDY_SYSTEMS), min_length=1)
    scenarios: list[Literal["nr", "fr"]] = Field(default_factory=lambda: ["nr", "fr"], min_length=1)
    pairs_per_item: int = Field(default=5, gt=0)  # double stimulus: random partners per image
    list_size: int = Field(default=4, ge=2, le=9)  # multiple stimulus: L
    lists_per_item: int = Field(default=2, gt=0)  # multiple stimulus: lists per image
    active_pairs: int = Field(default=0, ge=0)  # double stimulus, NR: extra pairs by information gain after pass 1
    n_exemplars: int = Field(default=1, gt=0)  # in-context: exemplars (each a stimulus with its human answer)
    max_new_tokens: int = Field(default=64, gt=0)  # chain-of-thought: length of the generated description
    single_readout: Literal["expectation", "argmax"] = "expectation"
    aggregation: Literal["thurstone_map", "thurstone_mosteller", "perron_frobenius", "elo"] = "thurstone_map"
    seed: int = 0

    def max_images_per_request(self) -> int:
        """An upper bound on one request's images: exemplars and the asked stimulus, each a list of
        L items plus a reference (what a vLLM engine must be told to accept)."""
        return (self.n_exemplars + 1) * (max(self.list_size, 2) + 1)

    @field_validator("systems")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STUDY_SYSTEMS]
        if bad:
            raise ValueError(f"unknown system(s) {bad}; choose from {list(STUDY_SYSTEMS)}")
        return v


class StudyOutputConfig(Section):
    uri: str = "out/study"  # folder (local or s3://): answers/ Parquet, summary.csv, summary.png
    storage: StorageConfig = Field(default_factory=StorageConfig)


class StudyConfig(Section):
    """`rayiqa eval study`: nine prompting systems x MLLMs, raw answers + SRCC table + heat-map."""

    data: StudyDataConfig = Field(default_factory=StudyDataConfig)
    subset: SubsetConfig = Field(default_factory=SubsetConfig)
    design: DesignConfig = Field(default_factory=DesignConfig)
    mllms: list[MLLMConfig] = Field(default_factory=lambda: [MLLMConfig()], min_length=1)
    stage: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=4))  # engine actor pool per MLLM
    output: StudyOutputConfig = Field(default_factory=StudyOutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

