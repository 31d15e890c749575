"""Random-weight `tiny` backbones for tests and the offline demo, built from real timm classes.

`tiny-cnn` is a narrow BatchNorm ResNet (the shape of TReS / MetaIQA's ResNet feature extractors);
`tiny-vit` is a small LayerNorm VisionTransformer (the shape of MUSIQ's transformer encoder).
Both normalise [0, 1] RGB input with ImageNet statistics and end in a Linear quality regressor. Their
weights come from a fixed seed (`seeded`), so every process builds the same model.
"""
from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from rayiqa.models.backbones.base import IQABackbone, seeded

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmIQANet(IQABackbone):
    """A timm feature network (num_classes=0, pooled output) plus a Linear regressor."""

    def __init__(self, body: nn.Module, image_size: int) -> None:
        super().__init__()
        self.body = body
        self.image_size = image_size
        self.head = nn.Linear(body.num_features, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return self.body((x - self.mean) / self.std)

    def regress(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(1)

    def extractor_modules(self) -> list[nn.Module]:
        return [self.body]


def tiny_cnn(image_size: int = 64) -> TimmIQANet:
    """timm ResNet-10-like: deep stem of width 4, one BasicBlock per stage, channels (8, 16, 32, 64), BatchNorm2d."""
    return seeded(lambda: TimmIQANet(ResNet(
        BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_type="deep", stem_width=4, num_classes=0
    ), image_size)).eval()


def tiny_vit(image_size: int = 64) -> TimmIQANet:
    """timm VisionTransformer, patch 16, width 32, 2 blocks, 2 heads, LayerNorm, mean-pooled tokens."""
    return seeded(lambda: TimmIQANet(VisionTransformer(
        img_size=image_size, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
        num_classes=0, global_pool="avg",
    ), image_size)).eval()
