"""Which SAM2.1 model a segmenter config names, without importing torch or sam2.

The job's driver names the segmenter in its run manifest before any actor starts; importing sam2
(and with it torch) only for that cost seconds of every run's start-up. The table below is sam2's
own `HF_MODEL_ID_TO_FILENAMES` for the SAM2.1 ids (a test keeps the two equal).
"""
from __future__ import annotations

from dataclasses import dataclass

from rayiqa.config import SegmenterConfig

# Named presets -> (official SAM2.1 id, sam2's config file, the checkpoint file it publishes).
PRESETS: dict[str, tuple[str, str, str]] = {
    "hiera_t": ("facebook/sam2.1-hiera-tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "hiera_s": ("facebook/sam2.1-hiera-small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "hiera_b+": ("facebook/sam2.1-hiera-base-plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "hiera_l": ("facebook/sam2.1-hiera-large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}
TINY_PRESET = "tiny"
TINY_IMAGE_SIZE = 256
RELEASED_IMAGE_SIZE = 1024  # the SAM2.1 checkpoints are trained at 1024


@dataclass(frozen=True)
class Sam2Spec:
    """What to build: the sam2 config file, the checkpoint URI (None: random init), the input size."""

    model_id: str
    config_file: str
    checkpoint: str | None
    image_size: int


def resolve_spec(cfg: SegmenterConfig) -> Sam2Spec:
    """Preset name -> build spec. `cfg.image_size` when set, else the preset's own size (256 for
    tiny, 1024 for the released models)."""
    explicit_size = cfg.image_size
    if cfg.preset == TINY_PRESET:
        _, config_file, _ = PRESETS["hiera_t"]
        return Sam2Spec("tiny:sam2.1_hiera_t", config_file, cfg.checkpoint, explicit_size or TINY_IMAGE_SIZE)
    if cfg.preset not in PRESETS:
        choices = ", ".join([TINY_PRESET, *PRESETS])
        raise ValueError(f"segmenter.preset: unknown SAM2 preset {cfg.preset!r}; choose one of {choices}")
    model_id, config_file, official_file = PRESETS[cfg.preset]
    return Sam2Spec(model_id, config_file, cfg.checkpoint or official_file, explicit_size or RELEASED_IMAGE_SIZE)
