"""The interface test-time adaptation needs from an IQA model: Θe -> pooled features -> regressor -> score.

LLM-TTA (and TTA-IQA before it) adapts only the normalisation layers of the feature extractor Θe and
reads a projection of its pooled features; `IQABackbone` exposes exactly those pieces, and
`wrap_module` turns any user nn.Module with norm layers into one.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, TypeVar

import torch
from torch import nn

# BatchNorm (1d/2d/3d, SyncBatchNorm), LayerNorm and GroupNorm, including library subclasses
# such as timm's LayerNorm2d.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)

FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class IQABackbone(nn.Module, ABC):
    """An NR-IQA model split as in LLM-TTA Fig. 3: feature extractor Θe and quality regressor.

    Inputs are RGB float tensors (B, 3, H, W) in [0, 1] (pyiqa's convention); each backbone does its
    own resizing and normalisation. `weights` is "pretrained" or "random-init".
    """

    weights: str = "random-init"

    @abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled Θe features, shape (B, D)."""

    @abstractmethod
    def regress(self, features: torch.Tensor) -> torch.Tensor:
        """Quality scores (B,) from pooled features."""

    @abstractmethod
    def extractor_modules(self) -> list[nn.Module]:
        """The modules that make up Θe (where norm layers are looked for)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: (features (B, D), scores (B,))."""
        f = self.features(x)
        return f, self.regress(f)

    def norm_layers(self) -> list[nn.Module]:
        """BatchNorm / LayerNorm / GroupNorm modules of Θe, each once, in module order."""
        seen: set[int] = set()
        out: list[nn.Module] = []
        for root in self.extractor_modules():
            for m in root.modules():
                if isinstance(m, NORM_TYPES) and id(m) not in seen:
                    seen.add(id(m))
                    out.append(m)
        return out


class WrappedBackbone(IQABackbone):
    """A user module as an `IQABackbone`: Θe is `module` minus whatever belongs to `regressor`."""

    def __init__(self, module: nn.Module, feature_fn: FeatureFn, regressor: nn.Module, weights: str) -> None:
        super().__init__()
        self.module = module
        self.regressor = regressor
        self._feature_fn = feature_fn
        self.weights = weights

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self._feature_fn(self.module, x)
        if f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise ValueError(f"feature_fn must return pooled features (B, D) with B={x.shape[0]}, got {tuple(f.shape)}")
        return f

    def regress(self, features: torch.Tensor) -> torch.Tensor:
        out = self.regressor(features)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != (features.shape[0],):
            raise ValueError(f"regressor must return one score per image, (B,) or (B, 1); got {tuple(out.shape)}")
        return out

    def extractor_modules(self) -> list[nn.Module]:
        return [self.module]

    def norm_layers(self) -> list[nn.Module]:
        in_regressor = {id(m) for m in self.regressor.modules()}
        return [m for m in super().norm_layers() if id(m) not in in_regressor]


def wrap_module(
    module: nn.Module, feature_fn: FeatureFn, regressor: nn.Module, weights: str = "pretrained"
) -> WrappedBackbone:
    """Wrap any nn.Module with norm layers for test-time adaptation.

    `feature_fn(module, x)` returns pooled features (B, D); `regressor` maps them to (B,) or (B, 1)
    scores and may be a submodule of `module` (its norm layers are then not adapted). Raises
    ValueError when Θe has no norm layer, since there would be nothing to adapt.
    """
    wrapped = WrappedBackbone(module, feature_fn, regressor, weights)
    if not wrapped.norm_layers():
        raise ValueError(
            f"{type(module).__name__} has no BatchNorm/LayerNorm/GroupNorm outside its regressor: nothing to adapt"
        )
    return wrapped.eval()


M = TypeVar("M", bound=nn.Module)
SEED = 0  # the random-weight presets' seed: every process (a job's actor, a Serve replica) builds the same model


def seeded(build: Callable[[], M]) -> M:
    """`build()` with torch's RNG seeded from SEED, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()
