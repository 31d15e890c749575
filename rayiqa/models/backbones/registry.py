"""One call from a name to a ready `IQABackbone`, in the spirit of pyiqa's `create_metric`."""
from __future__ import annotations

from typing import Callable

import torch

from rayiqa.models.backbones.base import IQABackbone
from rayiqa.models.backbones.pyiqa_zoo import PYIQA_REGRESSORS, load_pyiqa_backbone
from rayiqa.models.backbones.tiny import tiny_cnn, tiny_vit
from rayiqa.models.backbones.uiqa import tiny_uiqa, uiqa_swin_t

# Random-weight architectures (weights: random-init); pyiqa names load pretrained weights.
ARCHITECTURES: dict[str, Callable[[], IQABackbone]] = {
    "tiny-cnn": tiny_cnn,
    "tiny-vit": tiny_vit,
    "tiny-uiqa": tiny_uiqa,
    "uiqa-swin-t": uiqa_swin_t,
}


def backbone_names() -> list[str]:
    """Every name `create_backbone` accepts."""
    return sorted([*ARCHITECTURES, *PYIQA_REGRESSORS])


def create_backbone(name: str, device: str | torch.device = "cpu") -> IQABackbone:
    """Build the named backbone on `device`, in eval mode; unknown names list the known ones."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]().to(device)
    if name in PYIQA_REGRESSORS:
        return load_pyiqa_backbone(name, device)
    raise ValueError(f"unknown backbone {name!r}; choose one of {backbone_names()}")
