"""The two TTA baselines LLM-TTA compares against, on the same adaptation loop (`adapt_norm_layers`).

TTA-IQA (Roy et al., ICCV 2023; code `subhadeeproy2000/TTA-IQA`): clusters from the source model's
own predictions, group-contrastive loss plus a relative rank loss on weakly / strongly distorted
copies of each image.

FA-TTA-IQA (Kapoor et al., ICME 2025): no code is public and its paper's text was not available to
rayiqa, so this follows LLM-TTA's description of it (Sections 1-2): the base model's best
image is the anchor of the high-quality cluster; the other images are grouped by VGG-16 feature
affinity to that anchor - the k-1 most similar join the anchor, the k least similar form the
low-quality cluster - and the group-contrastive loss adapts the norm layers.
"""
from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from rayiqa.config.tta import TTAParams
from rayiqa.methods.llm_tta import (
    AdaptResult,
    Clusters,
    Embed,
    adapt_norm_layers,
    as_image_batch,
    cluster_contrastive_objective,
    predict,
    quality_clusters,
)

if TYPE_CHECKING:  # methods take any IQABackbone; no runtime dependency on the model layer
    from rayiqa.models.backbones.base import IQABackbone

DISTORTIONS = ("jpeg", "noise", "blur")
Strength = Literal["weak", "strong"]

# TTA-IQA's ranges: JPEG quality [80, 90) vs [40, 60); Gaussian noise variance 1e-5 vs 5e-5. Its
# code blurs with a 5-tap kernel at sigma 5-20 vs 40-60, which are nearly the same box filter;
# we use sigma [0.5, 1.5) vs [2, 3) with a kernel wide enough (2*ceil(3 sigma) + 1) for each.
JPEG_QUALITY = {"weak": (80, 90), "strong": (40, 60)}
NOISE_VARIANCE = {"weak": 1e-5, "strong": 5e-5}
BLUR_SIGMA = {"weak": (0.5, 1.5), "strong": (2.0, 3.0)}


def _jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode one (3, H, W) [0, 1] image as JPEG at `quality` with Pillow and decode it again."""
    pixels = (image * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(decoded).permute(2, 0, 1)


def distort(images: torch.Tensor, kind: str, strength: Strength, generator: torch.Generator) -> torch.Tensor:
    """One distorted copy of a [0, 1] batch; random levels are drawn per batch from `generator`."""
    if kind == "jpeg":
        lo, hi = JPEG_QUALITY[strength]
        quality = int(torch.randint(lo, hi, (1,), generator=generator))
        return torch.stack([_jpeg_roundtrip(img, quality) for img in images]).to(images.device)
    if kind == "noise":
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        return (images + math.sqrt(NOISE_VARIANCE[strength]) * noise).clamp(0, 1)
    if kind == "blur":
        lo, hi = BLUR_SIGMA[strength]
        sigma = lo + (hi - lo) * float(torch.rand(1, generator=generator))
        size = 2 * math.ceil(3 * sigma) + 1
        return TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])
    raise ValueError(f"unknown distortion {kind!r}; choose one of {DISTORTIONS}")


def rank_pairs(
    backbone: IQABackbone, images: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """TTA-IQA's per-image choice of distortion: the type whose weak and strong copies the source
    model scores furthest apart. Returns (weak copies, strong copies, chosen type per image)."""
    generator = torch.Generator().manual_seed(seed)
    copies = {kind: (distort(images, kind, "weak", generator), distort(images, kind, "strong", generator))
              for kind in DISTORTIONS}
    gaps = np.stack([np.abs(predict(backbone, strong) - predict(backbone, weak)) for weak, strong in copies.values()])
    choice = gaps.argmax(axis=0)
    weak = torch.stack([copies[DISTORTIONS[c]][0][i] for i, c in enumerate(choice)])
    strong = torch.stack([copies[DISTORTIONS[c]][1][i] for i, c in enumerate(choice)])
    return weak, strong, [DISTORTIONS[c] for c in choice]


def rank_loss(z: torch.Tensor, z_weak: torch.Tensor, z_strong: torch.Tensor) -> torch.Tensor:
    """TTA-IQA's relative rank loss: BCE(σ(‖z_strong − z‖ − ‖z_weak − z‖), 1), batch mean.

    A strongly distorted copy should lie further from the image than a weakly distorted one.
    """
    gap = (z_strong - z).norm(dim=1) - (z_weak - z).norm(dim=1)
    return F.binary_cross_entropy_with_logits(gap, torch.ones_like(gap))


def tta_iqa_adapt_and_predict(
    backbone: IQABackbone, images: torch.Tensor | np.ndarray, params: TTAParams = TTAParams(), gc_weight: float = 1.0
) -> AdaptResult:
    """TTA-IQA on one batch: rank loss + gc_weight * group-contrastive loss on the base model's clusters."""
    x = as_image_batch(backbone, images)
    base = predict(backbone, x)
    clusters = quality_clusters(base, params.k)
    weak, strong, kinds = rank_pairs(backbone, x, params.seed)
    group_term = cluster_contrastive_objective(x, clusters, params)

    def objective(embed: Embed) -> torch.Tensor:
        return rank_loss(embed(x), embed(weak), embed(strong)) + gc_weight * group_term(embed)

    adapted, losses = adapt_norm_layers(backbone, x, objective, params)
    return AdaptResult(scores=adapted, base_scores=base, clusters=clusters, losses=losses, distortions=kinds)


def feature_affinity_clusters(base_scores: np.ndarray, features: torch.Tensor, k: int = 2) -> Clusters:
    """FA-TTA-IQA grouping: anchor = base model's best image; rank the rest by cosine affinity of
    their features to the anchor; high = anchor + k-1 most similar, low = k least similar."""
    scores = np.asarray(base_scores, dtype=np.float64)
    if k < 2 or scores.size < 2 * k:
        raise ValueError(f"need k >= 2 and a batch of at least 2*k images, got k={k}, batch {scores.size}")
    if features.shape[0] != scores.size:
        raise ValueError(f"{features.shape[0]} feature rows for {scores.size} scores")
    anchor = int(np.argmax(scores))
    f = F.normalize(features.double(), dim=1)
    affinity = (f @ f[anchor]).cpu().numpy()
    others = np.array([i for i in np.argsort(-affinity, kind="stable") if i != anchor])
    return Clusters(high=np.concatenate([[anchor], others[: k - 1]]), low=others[::-1][:k].copy())


def fa_tta_iqa_adapt_and_predict(
    backbone: IQABackbone,
    images: torch.Tensor | np.ndarray,
    affinity_net: nn.Module,
    params: TTAParams = TTAParams(),
) -> AdaptResult:
    """FA-TTA-IQA on one batch; `affinity_net` maps images to (B, D) features (VGG-16 in the paper,
    see `rayiqa.models.backbones.vgg.create_vgg16_features`)."""
    x = as_image_batch(backbone, images)
    base = predict(backbone, x)
    affinity_net.eval()
    with torch.no_grad():
        features = affinity_net(x.to(next(affinity_net.parameters()).device))
    clusters = feature_affinity_clusters(base, features, params.k)
    adapted, losses = adapt_norm_layers(backbone, x, cluster_contrastive_objective(x, clusters, params), params)
    return AdaptResult(scores=adapted, base_scores=base, clusters=clusters, losses=losses)

