"""PromptIQA's training and inference math (Chen et al., ECCV 2024): ISPP sampling, RS/RF, in-batch prompting.

Random scaling and random flipping are Eq. 4. The paper writes RS as S / max(S); the reference
code instead divides by s ~ U(max(S), 1). We follow the paper by default and offer the code's form
as `variant="code"`. Training uses in-batch prompting as the reference code does: each image's ISPs
are the other images of its mini-batch, so the list S of Eq. 4 is the whole batch for every image
and one RS/RF draw per batch transforms prompts and ground truths consistently.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from rayiqa.models.promptiqa import PromptIQA

ScalingVariant = Literal["paper", "code"]
Sampling = Literal["interval", "random"]


def interval_sampling(scores: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices of k ISPs: sort by score, take the minimum, evenly spaced items and the maximum."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 1 <= k <= scores.size:
        raise ValueError(f"cannot sample k={k} ISPs from {scores.size} images")
    order = np.argsort(scores, kind="stable")
    return order[np.round(np.linspace(0, scores.size - 1, k)).astype(int)]


def random_sampling(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k distinct ISPs drawn uniformly from n images."""
    if not 1 <= k <= n:
        raise ValueError(f"cannot sample k={k} ISPs from {n} images")
    return rng.choice(n, size=k, replace=False)


def sample_ispp(scores: np.ndarray, k: int, strategy: Sampling, rng: np.random.Generator) -> np.ndarray:
    """ISP indices by the named strategy (Sec. 4.4 A)."""
    return interval_sampling(scores, k) if strategy == "interval" else random_sampling(len(scores), k, rng)


def random_scaling(
    scores: Tensor, variant: ScalingVariant = "paper", rng: np.random.Generator | None = None
) -> Tensor:
    """f_RS (Eq. 4): S / max(S); variant "code": S / s with s ~ U(max(S), 1)."""
    top = float(scores.max())
    if top <= 0:
        raise ValueError(f"random scaling needs a positive maximum score, got {top}")
    if variant == "paper":
        return scores / top
    if rng is None:
        raise ValueError("random scaling variant 'code' needs an rng")
    return scores / rng.uniform(top, 1.0) if top < 1.0 else scores / top


def random_flipping(scores: Tensor, alpha: float = 1.0) -> Tensor:
    """f_RF (Eq. 4): alpha - S, turning MOS into DMOS and back."""
    return alpha - scores


def augment_scores(
    scores: Tensor,
    rng: np.random.Generator,
    p_scale: float = 0.5,
    p_flip: float = 0.1,
    alpha: float = 1.0,
    scaling: ScalingVariant = "paper",
) -> Tensor:
    """RS with probability p_scale, then RF with probability p_flip, on one list S = [S_1..S_{k-1}, G]."""
    if rng.random() < p_scale:
        scores = random_scaling(scores, scaling, rng)
    if rng.random() < p_flip:
        scores = random_flipping(scores, alpha)
    return scores


def in_batch_prompt_index(batch_size: int) -> Tensor:
    """(B, B-1) indices: row i lists every other image of the batch, in batch order (its ISPP)."""
    if batch_size < 2:
        raise ValueError(f"in-batch prompting needs at least 2 images, got {batch_size}")
    full = torch.arange(batch_size).expand(batch_size, -1)
    keep = ~torch.eye(batch_size, dtype=torch.bool)
    return full[keep].view(batch_size, batch_size - 1)


def in_batch_predictions_from_features(model: PromptIQA, features: Tensor, scores: Tensor) -> Tensor:
    """In-batch prompting on encoded images V(I) (B, dim): each scored with the other B-1 pairs as ISPP.

    Also trains the prompt path alone on cached features of a frozen encoder.
    """
    prompts = model.prompt_features(features, scores)
    ispp = prompts[in_batch_prompt_index(features.shape[0]).to(prompts.device)]  # (B, B-1, dim)
    return model.predict(features, model.assessment_prompt(ispp))


def in_batch_predictions(model: PromptIQA, images: Tensor, scores: Tensor) -> Tensor:
    """Each image scored with the other B-1 image-score pairs of its batch as ISPP; one encoder pass."""
    return in_batch_predictions_from_features(model, model.encode(images), scores)


class InBatchPromptIQA(nn.Module):
    """PromptIQA in in-batch prompting form, forward(images, scores) -> predictions: the module DDP wraps."""

    def __init__(self, model: PromptIQA) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, scores: Tensor) -> Tensor:
        return in_batch_predictions(self.model, images, scores)


def in_batch_loss(
    predictor: Callable[[Tensor, Tensor], Tensor],
    images: Tensor,
    scores: Tensor,
    rng: np.random.Generator,
    p_scale: float = 0.5,
    p_flip: float = 0.1,
    alpha: float = 1.0,
    scaling: ScalingVariant = "paper",
) -> tuple[Tensor, Tensor, Tensor]:
    """L1 loss of one in-batch episode after RS/RF; `predictor` is an InBatchPromptIQA (or its DDP wrapper),
    or in_batch_predictions_from_features bound to a model, with cached features in place of `images`.

    Returns (loss, predictions, augmented targets).
    """
    targets = augment_scores(scores.float(), rng, p_scale, p_flip, alpha, scaling)
    predictions = predictor(images, targets)
    return nn.functional.l1_loss(predictions, targets), predictions, targets


@torch.no_grad()
def score_with_ispp(
    model: PromptIQA, images: Tensor, ispp_images: Tensor, ispp_scores: Tensor, batch_size: int = 32
) -> Tensor:
    """Scores of `images` (N, 3, H, W) under the requirement stated by one ISPP; F_AP computed once."""
    assessment_prompt = model.ispp_features(ispp_images, ispp_scores)
    return torch.cat([
        model.predict(model.encode(chunk), assessment_prompt) for chunk in images.split(batch_size)
    ])
