"""Configs of GRMP-IQA's Ray Train jobs: meta-prompt pre-training (`configs/train-grmp.yaml`) and
QGR fine-tuning with the few-shot protocol (`configs/finetune-grmp.yaml`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayiqa.config.base import RayConfig, Section, StorageConfig


class GRMPModelConfig(Section):
    """The prompted CLIP (`rayiqa.models.clip_prompt`); `tiny` builds a random-weight CLIP offline."""

    clip: str = "tiny"  # open_clip model name (e.g. ViT-B-16) or "tiny"
    pretrained: str | None = None  # open_clip pretrained tag ("openai") or a local weights file
    n_ctx: int = Field(default=4, ge=1)  # M text context vectors
    n_visual_tokens: int = Field(default=1, ge=0)  # visual prompt tokens per ViT layer (paper: 1)
    visual_projection: bool = False  # the reference code's shared Linear over visual prompts
    visual_dropout: float = Field(default=0.0, ge=0, lt=1)  # the reference code's prompt dropout
    seed: int = 0  # torch seed for building the model: same seed = same prompts and tiny weights


class GRMPDataConfig(Section):
    """An IQA dataset of the registry; labels are min-max scaled to [0, 1] (DMOS inverted)."""

    dataset: str = "synthetic"  # registry name: synthetic, tid2013, kadid10k, livec, koniq10k...
    root: str = "out/synthetic"  # folder or s3:// prefix with the dataset's official files
    options: dict[str, str] = Field(default_factory=dict)  # loader options, e.g. {label: ssim}
    synthetic_source: str | None = "builtin:samples"  # dataset=synthetic: build the set at root from these
    # pristine images if root has none (a folder, or builtin:samples = the 4 bundled photos); None: use root as it is
    synthetic_types: list[str] | None = None  # distortion types for the built set (None: all)
    synthetic_levels: int = Field(default=5, ge=1)  # levels per type for the built set
    limit: int | None = Field(default=None, gt=0)  # keep only the first N rows (smoke runs)
    max_pixels: int = Field(default=64_000_000, gt=0)  # decompression-bomb limit per image
    max_bytes: int = Field(default=100_000_000, gt=0)  # larger files are dropped with a warning
    storage: StorageConfig = Field(default_factory=StorageConfig)


class TrainRunConfig(Section):
    """Where Ray Train keeps checkpoints and how many workers it runs (gloo on CPU, nccl on GPU)."""

    storage_path: str = "out/ray-train"  # RunConfig(storage_path): local folder or s3:// prefix (reached with data.storage)
    name: str = "grmp"  # RunConfig(name); rerunning with the same name resumes from its latest checkpoint
    num_workers: int = Field(default=2, ge=1)
    cpus_per_worker: float = Field(default=0.5, gt=0)
    use_gpu: bool = False
    max_failures: int = Field(default=2, ge=-1)  # Ray Train worker-failure retries (-1: unlimited)


class MetaConfig(Section):
    """Meta-prompt pre-training (Sec. 3.3, Eqs. 4-6); defaults are the paper's."""

    alpha: float = Field(default=1e-4, gt=0)  # inner learning rate (Eqs. 4-5)
    beta: float = Field(default=1e-2, gt=0)  # outer learning rate (Eq. 6)
    inner_optimizer: Literal["adam", "sgd"] = "adam"
    epochs: int = Field(default=50, ge=1)
    tasks_per_batch: int = Field(default=4, ge=1)  # k tasks per meta mini-batch
    support_fraction: float = Field(default=0.8, gt=0, lt=1)  # of each task's samples
    task_batch_size: int | None = Field(default=32, gt=0)  # cap on support/query samples per step (None: all)
    held_out_types: list[str] = Field(default_factory=list)  # distortion types kept out for zero-shot SRCC
    seed: int = 0  # task split, batch order and subsampling


class GRMPTrainConfig(Section):
    """`rayiqa train grmp CONFIG`: meta-prompt pre-training on Ray Train."""

    model: GRMPModelConfig = Field(default_factory=GRMPModelConfig)
    data: GRMPDataConfig = Field(default_factory=GRMPDataConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    run: TrainRunConfig = Field(default_factory=lambda: TrainRunConfig(name="grmp-pretrain"))
    ray: RayConfig = Field(default_factory=RayConfig)


class FinetuneConfig(Section):
    """Fine-tuning with QGR (Sec. 3.4, Eqs. 7-8); defaults are the paper's."""

    init_checkpoint: str | None = None  # meta-pretrained checkpoint dir; None: prompts from model.seed
    lr: float = Field(default=5e-6, gt=0)  # AdamW
    weight_decay: float = Field(default=0.01, ge=0)  # AdamW's default
    epochs: int = Field(default=9, ge=1)  # cosine decay over these epochs
    batch_size: int = Field(default=16, ge=1)  # global batch, split across workers
    last_n_blocks: int = Field(default=4, ge=0)  # tuned blocks of each encoder
    tune_visual_prompts: bool = True  # False: the reference code's choice (visual prompts frozen)
    qgr_lambda: float = Field(default=5.0, ge=0)  # λ of Eq. 8; 0 is plain fine-tuning
    qgr_per_tensor: bool = False  # project per parameter tensor (reference code) instead of the whole
    train_fraction: float = Field(default=0.8, gt=0, lt=1)  # train/eval split (by reference image when known)
    seed: int = 0  # split, batch order


class FewShotConfig(Section):
    """The few-shot protocol (Sec. 4.3): n training samples from the 80 % split, median over splits."""

    sizes: list[int] = Field(default_factory=lambda: [50, 100, 200])
    repeats: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _positive(self) -> "FewShotConfig":
        if not self.sizes or min(self.sizes) < 2:
            raise ValueError(f"sizes must be a non-empty list of counts >= 2, got {self.sizes}")
        return self


class GRMPFinetuneConfig(Section):
    """`rayiqa train grmp-finetune CONFIG`: QGR fine-tuning, or the few-shot protocol (`mode: fewshot`)."""

    mode: Literal["finetune", "fewshot"] = "finetune"
    model: GRMPModelConfig = Field(default_factory=GRMPModelConfig)
    data: GRMPDataConfig = Field(default_factory=GRMPDataConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    fewshot: FewShotConfig = Field(default_factory=FewShotConfig)
    run: TrainRunConfig = Field(default_factory=lambda: TrainRunConfig(name="grmp-finetune"))
    ray: RayConfig = Field(default_factory=RayConfig)
