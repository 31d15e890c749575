"""torchvision VGG-16 as the image-affinity feature network of FA-TTA-IQA.

Tests use random weights (`weights=None`); users pass `weights="IMAGENET1K_V1"` (torchvision
downloads it once) as FA-TTA-IQA does with its ImageNet-pretrained VGG-16.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from rayiqa.models.backbones.tiny import IMAGENET_MEAN, IMAGENET_STD


class VGG16Features(nn.Module):
    """[0, 1] RGB (B, 3, H, W) -> global-average-pooled conv5_3 features (B, 512)."""

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.convs = vgg16(weights=VGG16_Weights[weights] if weights else None).features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs((x - self.mean) / self.std).mean(dim=(2, 3))


def create_vgg16_features(weights: str | None = None) -> VGG16Features:
    """VGG-16 feature network in eval mode; `weights` names a torchvision `VGG16_Weights` member."""
    return VGG16Features(weights).eval()
