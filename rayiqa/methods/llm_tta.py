"""LLM-TTA (Bashir et al., McGE '25, Sections 3-4): an MLLM ranks each test batch, its top-k and
bottom-k images form quality clusters, and a group-contrastive loss on projected features adapts
only the norm layers of the IQA backbone's feature extractor Θe before it predicts; the source
model is restored for every batch.

Tensor/array code over any `rayiqa.models.backbones.IQABackbone` and any level engine; every knob
is one `rayiqa.config.tta.TTAParams`. Images are RGB float (B, 3, H, W) in [0, 1]. The scoring job
and the Serve deployment both build the source model with `source_backbone`, form batches with
`to_batch_tensor` and rank with `prompt2_scores`, so one batch gets one set of adapted scores.
`adapt_norm_layers` is the adaptation loop shared with the TTA-IQA / FA-TTA-IQA baselines.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
from scipy.special import expit
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from rayiqa.config.tta import LossForm, TTAParams

if TYPE_CHECKING:  # methods take any IQABackbone and engine; the model layer is imported on use only
    from rayiqa.models.backbones.base import IQABackbone
    from rayiqa.models.mllm.base import LevelEngine, LevelPrompt


# Section 4.3's prompts; the paper reads the logits of `good` and `poor` after Prompt 2 (default).
PROMPT_1 = "Rate the quality of the image"
PROMPT_2 = "The quality of the image is"
PROMPT_3 = (
    "Rate the quality of the image in terms of sharpness, noise, distortion, and clarity. "
    "Provide a quality score from 1 (bad) to 10 (good) only. Format: Score: x"
)
PROMPTS: dict[int, str] = {1: PROMPT_1, 2: PROMPT_2, 3: PROMPT_3}
DEFAULT_PROMPT = PROMPT_2
SCORE_WORDS = ("good", "poor")


def prompt2() -> LevelPrompt:
    """Q-Bench's single-stimulus prompt as LLM-TTA uses it: the assistant turn starts with prompt 2,
    the next token is read as ` good` vs ` poor`."""
    from rayiqa.models.mllm.base import LevelPrompt

    return LevelPrompt(user=PROMPT_1 + ".", levels=tuple(f" {w}" for w in SCORE_WORDS), assistant_prefix=PROMPT_2)


def prompt2_scores(engines: Sequence[LevelEngine], images: Sequence[np.ndarray]) -> np.ndarray:
    """The LLM ranking of a batch: Eq. 2's S_I after `prompt2()` for each RGB uint8 image, one forward
    per image and engine, averaged over the engines (one engine: its p(good))."""
    from rayiqa.models.mllm.base import LevelRequest

    requests = [LevelRequest(prompt2(), [im]) for im in images]
    per_engine = []
    for engine in engines:
        p = engine.level_probs(requests)
        per_engine.append(llm_quality_score(np.log(p[:, 0]), np.log(p[:, 1])))
    return ensemble_scores(per_engine)


Embed = Callable[[torch.Tensor], torch.Tensor]


def _finite_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} has non-finite values at positions {bad.tolist()}")
    return arr


def llm_quality_score(logit_good: Sequence[float] | np.ndarray, logit_poor: Sequence[float] | np.ndarray) -> np.ndarray:
    """Eq. 2: S_I = e^{l_good} / (e^{l_good} + e^{l_poor}), the softmax over the two logits, i.e. p(good).

    Computed as the logistic function of l_good - l_poor, which is the same number without overflow.
    """
    good = _finite_vector(logit_good, "logit_good")
    poor = _finite_vector(logit_poor, "logit_poor")
    if good.shape != poor.shape:
        raise ValueError(f"logit_good has {good.size} entries but logit_poor has {poor.size}")
    return expit(good - poor)


def ensemble_scores(score_sets: Sequence[Sequence[float] | np.ndarray]) -> np.ndarray:
    """Mean of several rankers' scores per image (the paper's future-work ensemble of LLMs)."""
    if not score_sets:
        raise ValueError("ensemble_scores needs at least one ranker's scores")
    arrays = [_finite_vector(s, f"ranker {i} scores") for i, s in enumerate(score_sets)]
    sizes = {a.size for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"rankers scored different numbers of images: {[a.size for a in arrays]}")
    return np.mean(arrays, axis=0)


def rank_batch(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Indices of the batch from best to worst score (ties keep batch order)."""
    return np.argsort(-_finite_vector(scores, "scores"), kind="stable")


@dataclass(frozen=True)
class Clusters:
    """Batch indices of the high-quality (best first) and low-quality (worst first) clusters."""

    high: np.ndarray
    low: np.ndarray


def quality_clusters(scores: Sequence[float] | np.ndarray, k: int = 2) -> Clusters:
    """Section 3: the k highest- and k lowest-scored images of a batch (top-2 / bottom-2 of 8)."""
    order = rank_batch(scores)
    if k < 2:
        raise ValueError(f"k must be >= 2 so each cluster has a positive pair, got {k}")
    if order.size < 2 * k:
        raise ValueError(f"a batch of {order.size} images is smaller than 2*k = {2 * k}")
    return Clusters(high=order[:k].copy(), low=order[::-1][:k].copy())


def projection_head(in_dim: int, out_dim: int = 256, seed: int = 2021) -> nn.Sequential:
    """Θp: Linear(in_dim -> out_dim) -> Sigmoid, seeded random init, frozen (never trained)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.Linear(in_dim, out_dim), nn.Sigmoid())
    return head.requires_grad_(False).eval()


def group_contrastive_loss(
    z_high: torch.Tensor, z_low: torch.Tensor, tau: float, form: LossForm = "paper"
) -> torch.Tensor:
    """Eq. 3 with cosine similarity, averaged over every anchor of both clusters.

    form="paper" (default, as written in LLM-TTA): for anchor i, each same-cluster j gives
    -log( e^{sim(z_i,z_j)/τ} / Σ_{k∈A(i)} e^{sim(z_i,z_k)/τ} ), A(i) the other cluster; the per-anchor
    loss is the mean over its positives j (one j when k = 2), the result the mean over anchors.
    form="tta-iqa" (TTA-IQA's code): pos(i) = mean over j of sim(z_i, z_j), N(i) = Σ_{k∈A(i)}
    e^{sim/τ}, loss = -log( mean_i e^{pos(i)/τ} / (e^{pos(i)/τ} + N(i)) ), the log of the mean ratio.
    """
    if len(z_high) < 2 or len(z_low) < 2:
        raise ValueError(f"each cluster needs >= 2 members, got {len(z_high)} and {len(z_low)}")
    z = F.normalize(torch.cat([z_high, z_low]), dim=1)
    logits = z @ z.T / tau
    group = torch.cat([torch.zeros(len(z_high)), torch.ones(len(z_low))]).to(z.device)
    same = group[:, None] == group[None, :]
    positive = same & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_negatives = torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1)  # log Σ_{k∈A(i)}
    n_pos = positive.sum(dim=1)
    if form == "paper":
        per_pair = (log_negatives[:, None] - logits).masked_fill(~positive, 0.0)
        return (per_pair.sum(dim=1) / n_pos).mean()
    if form == "tta-iqa":
        mean_pos = logits.masked_fill(~positive, 0.0).sum(dim=1) / n_pos  # pos(i)/τ
        # e^{p}/(e^{p} + N) = sigmoid(p - log N)
        return -torch.log(torch.sigmoid(mean_pos - log_negatives).mean())
    raise ValueError(f"form must be 'paper' or 'tta-iqa', got {form!r}")


@dataclass
class AdaptResult:
    """What one batch's adaptation produced; enough to explain every adapted score."""

    scores: np.ndarray  # adapted predictions (B,)
    base_scores: np.ndarray  # source-model predictions (B,)
    clusters: Clusters
    losses: list[float]  # auxiliary loss at each iteration, before its update
    distortions: list[str] | None = field(default=None)  # TTA-IQA: rank-loss distortion per image

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def as_image_batch(backbone: IQABackbone, images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate an RGB [0, 1] float batch (B, 3, H, W) and move it to the backbone's device."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"images must be float RGB in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("images must be finite RGB values in [0, 1]")
    return x.to(next(backbone.parameters()).device)


def to_batch_tensor(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """RGB uint8 HxWx3 images -> float (B, 3, size, size) in [0, 1]: an antialiased resize of the
    uint8 pixels, then scaling; the one way a batch is formed for the backbone."""
    resized = [TF.resize(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1), [size, size], antialias=True)
               for im in images]
    return TF.to_dtype(torch.stack(resized), torch.float32, scale=True)


def source_backbone(params: TTAParams) -> IQABackbone:
    """The source model: `params.backbone` on `params.device` ("auto": cuda when visible), with the
    state_dict file `params.weights` loaded when one is given."""
    from rayiqa.models.backbones import create_backbone
    from rayiqa.models.mllm.transformers_engine import resolve_device

    device = resolve_device(params.device)
    backbone = create_backbone(params.backbone, device)
    if params.weights:
        backbone.load_state_dict(torch.load(params.weights, map_location=device, weights_only=True))
        backbone.weights = "pretrained"
    return backbone


def predict(backbone: IQABackbone, images: torch.Tensor) -> np.ndarray:
    """Scores (B,) of the backbone as it stands, in eval mode, without gradients."""
    backbone.eval()
    with torch.no_grad():
        return backbone(images)[1].double().cpu().numpy()


@contextmanager
def norm_only_adaptation(backbone: IQABackbone) -> Iterator[list[nn.Parameter]]:
    """Make only Θe's norm-layer affine parameters trainable and only norm layers train-mode.

    Yields those parameters. On exit (also on error) the norm layers' parameters, running
    statistics and num_batches_tracked are copied back from an in-memory snapshot, every
    requires_grad flag is restored and the backbone is left in eval mode.
    """
    norms = backbone.norm_layers()
    snapshot = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in norms]
    flags = [(p, p.requires_grad) for p in backbone.parameters()]
    try:
        backbone.eval().requires_grad_(False)
        params: list[nn.Parameter] = []
        for m in norms:
            m.train()
            for p in m.parameters(recurse=False):
                params.append(p.requires_grad_(True))
        yield params
    finally:
        with torch.no_grad():
            for m, state in zip(norms, snapshot):
                m.load_state_dict(state)
        for p, flag in flags:
            p.requires_grad_(flag)
        backbone.eval()


def adapt_norm_layers(
    backbone: IQABackbone,
    images: torch.Tensor,
    objective: Callable[[Embed], torch.Tensor],
    params: TTAParams,
) -> tuple[np.ndarray, list[float]]:
    """Eq. 1: minimise `objective(embed)` over Θe's norm parameters, predict, restore the source.

    `embed(x)` = Θp(Θe(x)) with a seeded, frozen projection head. A fresh Adam per call; BN layers
    use batch statistics while adapting and their (updated) running statistics when predicting,
    as TTA-IQA's code does. Returns adapted scores (B,) and the loss of every iteration.
    """
    head: list[nn.Module] = []  # built on first use, when the feature width is known

    def embed(x: torch.Tensor) -> torch.Tensor:
        f = backbone.features(x)
        if not head:
            head.append(projection_head(f.shape[1], params.proj_dim, params.seed).to(f.device))
        return head[0](f)

    with norm_only_adaptation(backbone) as norm_params:
        if not norm_params:
            raise ValueError(f"{type(backbone).__name__} has no affine norm parameters to adapt")
        optimiser = torch.optim.Adam(norm_params, lr=params.lr)
        losses: list[float] = []
        for it in range(params.iterations):
            optimiser.zero_grad(set_to_none=True)
            loss = objective(embed)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"adaptation loss is not finite at iteration {it}: {loss.item()}")
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        scores = predict(backbone, images)
    return scores, losses


def cluster_contrastive_objective(
    images: torch.Tensor, clusters: Clusters, params: TTAParams
) -> Callable[[Embed], torch.Tensor]:
    """Embed the whole batch (BN statistics of all B images), contrast the two clusters' embeddings."""
    high = torch.as_tensor(clusters.high, device=images.device)
    low = torch.as_tensor(clusters.low, device=images.device)

    def objective(embed: Embed) -> torch.Tensor:
        z = embed(images)
        return group_contrastive_loss(z[high], z[low], params.tau, params.loss_form)

    return objective


def adapt_and_predict(
    backbone: IQABackbone,
    images: torch.Tensor | np.ndarray,
    ranker_scores: Sequence[float] | np.ndarray,
    params: TTAParams = TTAParams(),
) -> AdaptResult:
    """LLM-TTA on one batch: clusters from the ranker's scores (p(good) or an ensemble), adapt, predict.

    The backbone's state is the source state again when this returns (or raises).
    """
    x = as_image_batch(backbone, images)
    scores = _finite_vector(ranker_scores, "ranker_scores")
    if scores.size != x.shape[0]:
        raise ValueError(f"{scores.size} ranker scores for a batch of {x.shape[0]} images")
    clusters = quality_clusters(scores, params.k)
    base = predict(backbone, x)
    adapted, losses = adapt_norm_layers(backbone, x, cluster_contrastive_objective(x, clusters, params), params)
    return AdaptResult(scores=adapted, base_scores=base, clusters=clusters, losses=losses)
