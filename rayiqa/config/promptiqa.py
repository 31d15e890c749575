"""PromptIQA configs: the network and mixed-dataset training on Ray Train (scoring: rayiqa.scorers.promptiqa).

Defaults are the offline demo (tiny random-weight encoder, synthetic sets made from the bundled
pristine photos); `configs/train-promptiqa.yaml` documents every key and the paper's values.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayiqa.config.base import RayConfig, Section, StorageConfig


class PromptIQAModelConfig(Section):
    """The PromptIQA network (paper Sec. 3.2): encoder, prompt encoder, two fusion modules, regressor."""

    encoder: str = "tiny"  # "tiny" (random-weight timm ResNet) or any timm model name, e.g. vit_base_patch8_224
    encoder_weights: str | None = None  # local timm weights file for a named encoder (nothing is downloaded)
    checkpoint: str | None = None  # a PromptIQA state dict (.pt/.pth, 'module.' prefixes ok) or a Ray Train checkpoint dir
    image_size: int = Field(default=64, gt=0)  # images are resized to image_size^2 (paper: 224)
    dim: int = Field(default=32, gt=0)  # feature width N = M (paper/code: 128)
    num_heads: int = Field(default=2, gt=0)
    mlp_ratio: float = Field(default=2.0, gt=0)
    prompt_depth: int = Field(default=3, ge=1)  # prompt encoder blocks (paper: 3)
    ispp_depth: int = Field(default=3, ge=1)  # ISPP fusion blocks (paper: 3)
    fusion_depth: int = Field(default=8, ge=1)  # image-prompt fusion blocks (paper: 8)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "PromptIQAModelConfig":
        if self.dim % self.num_heads or self.dim % 2:
            raise ValueError(f"dim {self.dim} must be even and divisible by num_heads {self.num_heads}")
        return self


class DatasetSpec(Section):
    """One registry dataset of the mixed training set; each is one assessment requirement."""

    name: str = "synthetic"  # a registry name (rayiqa.data.dataset_names())
    root: str = "out/promptiqa/synthetic"  # local folder or s3:// prefix of the dataset
    label: str | None = None  # synthetic only: the requirement column used as score (ssim, psnr, gmsd, ssim_inv...)
    train_fraction: float = Field(default=0.8, gt=0, lt=1)

    @property
    def key(self) -> str:
        """The name metrics are reported under: `name` or `name:label`."""
        return f"{self.name}:{self.label}" if self.label else self.name


def _default_datasets() -> list[DatasetSpec]:
    return [DatasetSpec(label="ssim"), DatasetSpec(label="psnr"), DatasetSpec(label="gmsd_inv")]


class SyntheticSourceConfig(Section):
    """Makes the `synthetic` datasets' folder from pristine images when it has no annotations yet."""

    make: bool = True  # create missing synthetic sets before training
    pristine: str = "builtin:samples"  # folder of pristine images; builtin:samples = the bundled PNG originals
    types: list[str] = Field(default_factory=lambda: ["gaussian_blur", "gaussian_noise", "jpeg", "contrast"])
    levels: int = Field(default=5, ge=2)
    seed: int = 0


class AugmentConfig(Section):
    """Random scaling / random flipping of the score list (paper Eq. 4)."""

    p_scale: float = Field(default=0.5, ge=0, le=1)
    p_flip: float = Field(default=0.1, ge=0, le=1)
    alpha: float = 1.0  # RF constant: S -> alpha - S
    scaling: Literal["paper", "code"] = "paper"  # paper: S/max(S); code: S/s with s ~ U(max(S), 1)


class OptimConfig(Section):
    lr: float = Field(default=1e-5, gt=0)  # Adam (paper: 1e-5)
    weight_decay: float = Field(default=1e-5, ge=0)
    cosine_epochs: int = Field(default=50, gt=0)  # CosineAnnealingLR period in epochs (paper: 50)


class PromptIQATrainConfig(Section):
    """`rayiqa train promptiqa CONFIG`: mixed-dataset training with in-batch prompting on Ray Train."""

    model: PromptIQAModelConfig = Field(default_factory=PromptIQAModelConfig)
    datasets: list[DatasetSpec] = Field(default_factory=_default_datasets, min_length=1)
    synthetic: SyntheticSourceConfig = Field(default_factory=SyntheticSourceConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    epochs: int = Field(default=2, gt=0)
    batch_size: int = Field(default=11, ge=2)  # images per in-batch episode: batch_size - 1 prompts each (paper: 11)
    ispp_size: int = Field(default=10, ge=1)  # k ISPs per validation prompt
    ispp_sampling: Literal["interval", "random"] = "interval"
    max_steps_per_epoch: int | None = Field(default=None, gt=0)  # cap episodes per worker per epoch (smoke runs)
    num_workers: int = Field(default=2, gt=0)  # DDP workers
    cpus_per_worker: float = Field(default=0.5, gt=0)
    use_gpu: bool = False
    loader_cpus: float = Field(default=0.5, gt=0)  # CPUs per Ray Data task that reads and decodes episodes
    loader_tasks: int | None = Field(default=None, gt=0)  # most loader tasks at once (None: as many as CPUs allow)
    storage_path: str = "out/promptiqa/runs"  # local folder or s3:// prefix for checkpoints and results
    name: str = "promptiqa"  # run name; a rerun with the same storage_path + name resumes from its latest checkpoint
    storage: StorageConfig = Field(default_factory=StorageConfig)
    max_failures: int = Field(default=2, ge=-1)  # Ray Train worker-failure retries (-1: unlimited)
    keep_checkpoints: int = Field(default=2, gt=0)
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _unique_keys(self) -> "PromptIQATrainConfig":
        keys = [d.key for d in self.datasets]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"datasets: {repeated} listed more than once")
        return self
