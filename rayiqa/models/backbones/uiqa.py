"""UIQA (Sun et al. 2024, arXiv 2409.00749) rebuilt from its paper: no public weights or code are used.

Three Swin Transformer branches see the same image three ways: the whole image downsampled
(aesthetics), a fragment mosaic of mini-patches taken at native resolution from a g x g grid
(technical distortions), and a centre crop (the paper's cheap stand-in for salient content). Their
pooled features are concatenated and a two-layer MLP regresses the score.

Departures, stated: every branch takes the same square size S (the paper's sizes differ per
branch); the mini-patch of each grid cell is taken at the cell centre (deterministic; the paper
samples at random positions while training); an official UIQA checkpoint's keys are not mapped.
"""
from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from rayiqa.models.backbones.base import IQABackbone, seeded
from rayiqa.models.backbones.tiny import IMAGENET_MEAN, IMAGENET_STD


def grid_fragments(x: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """Mosaic of one `patch` x `patch` native-resolution patch from the centre of each grid cell.

    (B, 3, H, W) -> (B, 3, grid*patch, grid*patch); images smaller than the mosaic are upsampled
    to it first so that every cell holds a full patch.
    """
    side = grid * patch
    h, w = x.shape[-2:]
    if h < side or w < side:
        scale = side / min(h, w)
        x = nn.functional.interpolate(x, size=(max(side, round(h * scale)), max(side, round(w * scale))),
                                      mode="bilinear", antialias=True)
        h, w = x.shape[-2:]
    rows = []
    for i in range(grid):
        top = (2 * i + 1) * h // (2 * grid) - patch // 2
        top = min(max(top, 0), h - patch)
        cols = []
        for j in range(grid):
            left = (2 * j + 1) * w // (2 * grid) - patch // 2
            left = min(max(left, 0), w - patch)
            cols.append(x[..., top:top + patch, left:left + patch])
        rows.append(torch.cat(cols, dim=-1))
    return torch.cat(rows, dim=-2)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central `size` x `size` crop; shorter sides below `size` are upsampled first."""
    h, w = x.shape[-2:]
    if min(h, w) < size:
        scale = size / min(h, w)
        x = nn.functional.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                                      mode="bilinear", antialias=True)
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


class UIQANet(IQABackbone):
    """Aesthetic / distortion / saliency Swin branches -> concatenated pooled features -> 2-layer MLP."""

    def __init__(self, swin_kwargs: dict, image_size: int, grid: int, mlp_hidden: int) -> None:
        super().__init__()
        if image_size % grid:
            raise ValueError(f"image_size {image_size} must be a multiple of grid {grid}")
        self.image_size, self.grid = image_size, grid
        self.aesthetic, self.distortion, self.saliency = (
            SwinTransformer(img_size=image_size, num_classes=0, **swin_kwargs) for _ in range(3)
        )
        d = self.aesthetic.num_features
        self.head = nn.Sequential(nn.Linear(3 * d, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        views = (
            (self.aesthetic, nn.functional.interpolate(x, size=(s, s), mode="bilinear", antialias=True)),
            (self.distortion, grid_fragments(x, self.grid, s // self.grid)),
            (self.saliency, centre_crop(x, s)),
        )
        return torch.cat([branch((v - self.mean) / self.std) for branch, v in views], dim=1)

    def regress(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(1)

    def extractor_modules(self) -> list[nn.Module]:
        return [self.aesthetic, self.distortion, self.saliency]


def tiny_uiqa(image_size: int = 32) -> UIQANet:
    """Random-weight UIQA with three 2-stage Swin branches of width 16 (window 4, grid 4 x 8 px)."""
    swin = dict(patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, drop_path_rate=0.0)
    return seeded(lambda: UIQANet(swin, image_size=image_size, grid=4, mlp_hidden=32)).eval()


def uiqa_swin_t() -> UIQANet:
    """UIQA at paper scale: three Swin-T branches (224 px, window 7, 7 x 7 grid of 32 px patches), random init."""
    swin = dict(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
    return UIQANet(swin, image_size=224, grid=7, mlp_hidden=128).eval()
