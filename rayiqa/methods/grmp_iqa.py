"""GRMP-IQA's math (grmp-iqa.txt, Sec. 3): quality probability and loss, distortion meta-tasks, the
bi-level meta-prompt update, and quality-aware gradient regularization (QGR).

Plain functions over tensors and parameter dicts, no Ray: the trainer splits tasks across workers,
computes per-task deltas with `task_delta`, all-reduces them and calls `apply_meta_update`.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = Mapping[str, Tensor]
LossFn = Callable[[Params, Any], Tensor]
InnerOptimizer = Literal["adam", "sgd"]
_INNER_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def p_high(logits: Tensor) -> Tensor:
    """p(q_high | x) of Eq. 2: softmax over the scaled cosine logits (high, low), column 0."""
    return logits.softmax(dim=-1)[..., 0]


def quality_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 3, the binary cross-entropy between p(q_high | x) and labels y in [0, 1], batch mean.

    p_high = sigmoid(l_high - l_low), so the library's stable BCE-with-logits computes it exactly.
    """
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"logits must have shape (B, 2) for (high, low), got {tuple(logits.shape)}")
    labels = labels.to(logits.dtype).reshape(-1)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels: {labels.shape[0]} values for {logits.shape[0]} images")
    if not bool(torch.isfinite(labels).all()) or bool((labels < 0).any()) or bool((labels > 1).any()):
        raise ValueError(f"labels must be finite and lie in [0, 1]; got min {labels.min()}, max {labels.max()}")
    return F.binary_cross_entropy_with_logits(logits[:, 0] - logits[:, 1], labels)


def model_quality_loss(model: nn.Module) -> LossFn:
    """A loss L(θ, batch) for the bi-level update: Eq. 3 of `model` run with parameters θ substituted.

    `batch` is (images, labels); parameters not in θ are the model's own.
    """

    def loss(theta: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        return quality_loss(functional_call(model, dict(theta), (images,)), labels)

    return loss


@dataclass(frozen=True)
class MetaTask:
    """One distortion meta-task T_t: indices of its support and query samples (Sec. 3.3)."""

    name: str
    support: tuple[int, ...]
    query: tuple[int, ...]


def build_meta_tasks(distortion_types: Sequence[str], support_fraction: float = 0.8, seed: int = 0) -> list[MetaTask]:
    """One task per distortion type, its samples split at random into support and query sets.

    `distortion_types[i]` is the distortion of sample i. Tasks come sorted by name; each keeps at
    least one sample on each side, so a type with fewer than two samples is an error.
    """
    if not 0 < support_fraction < 1:
        raise ValueError(f"support_fraction must lie in (0, 1), got {support_fraction}")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(distortion_types):
        groups[name].append(index)
    too_small = sorted(name for name, members in groups.items() if len(members) < 2)
    if too_small:
        raise ValueError(f"distortion types with fewer than 2 samples cannot be split: {too_small}")
    rng = random.Random(seed)
    tasks = []
    for name in sorted(groups):
        members = rng.sample(groups[name], len(groups[name]))
        n_support = min(max(round(support_fraction * len(members)), 1), len(members) - 1)
        tasks.append(MetaTask(name, tuple(sorted(members[:n_support])), tuple(sorted(members[n_support:]))))
    return tasks


def meta_batches(tasks: Sequence[MetaTask], k: int, seed: int) -> list[list[MetaTask]]:
    """One epoch of meta mini-batches: the tasks shuffled (seeded) and cut into groups of k, 1 <= k <= T.

    The last group is shorter when k does not divide T.
    """
    if not 1 <= k <= len(tasks):
        raise ValueError(f"k must lie in [1, {len(tasks)}] (the number of tasks), got {k}")
    order = random.Random(seed).sample(list(tasks), len(tasks))
    return [order[i : i + k] for i in range(0, len(order), k)]


def adapt_to_task(
    theta: Params,
    support: Any,
    query: Any,
    loss_fn: LossFn,
    alpha: float,
    inner_optimizer: InnerOptimizer = "adam",
) -> dict[str, Tensor]:
    """θ_i for one task: Eq. 4 (a step on the support set) then Eq. 5 (a step on the query set).

    Eq. 5's gradient is taken at θ'_i, the adapted prompt ("we assess the performance of the
    updated model on the query set"), which is also what the reference code does. With "sgd" each
    step is exactly θ ← θ − α∇L; with "adam" (the paper's optimiser) each task gets a fresh
    torch.optim.Adam(lr=α) whose state spans its two steps only.
    """
    theta_i = {name: value.detach().clone().requires_grad_(True) for name, value in theta.items()}
    leaves = list(theta_i.values())
    if inner_optimizer not in _INNER_OPTIMIZERS:
        raise ValueError(f"inner_optimizer must be one of {sorted(_INNER_OPTIMIZERS)}, got {inner_optimizer!r}")
    optimizer = _INNER_OPTIMIZERS[inner_optimizer](leaves, lr=alpha)
    for batch in (support, query):
        grads = torch.autograd.grad(loss_fn(theta_i, batch), leaves, materialize_grads=True)
        for leaf, grad in zip(leaves, grads):
            leaf.grad = grad
        optimizer.step()
    return {name: leaf.detach() for name, leaf in theta_i.items()}


def task_delta(
    theta: Params,
    support: Any,
    query: Any,
    loss_fn: LossFn,
    alpha: float,
    inner_optimizer: InnerOptimizer = "adam",
) -> dict[str, Tensor]:
    """θ − θ_i for one task (Eqs. 4–5): the term each worker contributes to Eq. 6's mean."""
    theta_i = adapt_to_task(theta, support, query, loss_fn, alpha, inner_optimizer)
    return {name: theta[name].detach() - theta_i[name] for name in theta}


def mean_delta(deltas: Sequence[Params]) -> dict[str, Tensor]:
    """(1/k) Σ_i (θ − θ_i) over the k tasks of a meta mini-batch (Eq. 6)."""
    if not deltas:
        raise ValueError("mean_delta needs at least one task delta")
    return {name: torch.stack([d[name] for d in deltas]).mean(dim=0) for name in deltas[0]}


@torch.no_grad()
def apply_meta_update(theta: Params, delta: Params, beta: float) -> None:
    """Eq. 6 in place: θ ← θ − β · mean_i(θ − θ_i), with `delta` the (all-reduced) mean."""
    for name, value in theta.items():
        value.sub_(beta * delta[name].to(value.device, value.dtype))


def semantic_kl(sem_logits: Tensor, qua_logits: Tensor) -> Tensor:
    """L_kl of Eq. 7: KL(p^sem ‖ p^qua) over the scene classes, batch mean; V^sem is a constant."""
    return F.kl_div(
        F.log_softmax(qua_logits, dim=-1),
        F.log_softmax(sem_logits.detach(), dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def _project(g_qua: Tensor, g_sem: Tensor, lam: float) -> Tensor:
    dot = torch.dot(g_qua.reshape(-1), g_sem.reshape(-1))
    if dot <= 0:
        return g_qua
    return g_qua - lam * dot / g_sem.pow(2).sum() * g_sem


def qgr(g_qua: Sequence[Tensor], g_sem: Sequence[Tensor], lam: float = 5.0, per_tensor: bool = False) -> list[Tensor]:
    """G_qgr of Eq. 8: remove λ times G_qua's component along G_sem when G_qua · G_sem > 0.

    Default: the dot product and norm over all parameters flattened into one vector, as Eq. 8 and
    the single angle of Fig. 4b treat the gradient; `per_tensor=True` is the reference code's
    variant (each parameter tensor projected on its own).
    """
    if len(g_qua) != len(g_sem):
        raise ValueError(f"G_qua has {len(g_qua)} tensors, G_sem {len(g_sem)}")
    if per_tensor:
        return [_project(q, s, lam) for q, s in zip(g_qua, g_sem)]
    flat = _project(_flatten(g_qua), _flatten(g_sem), lam)
    return [part.view_as(q) for part, q in zip(flat.split([q.numel() for q in g_qua]), g_qua)]


def gradient_angle(g_qua: Sequence[Tensor], g_sem: Sequence[Tensor]) -> float:
    """Angle in degrees between G_qua and G_sem over all parameters (Fig. 4b); NaN if either is zero."""
    q, s = _flatten(g_qua), _flatten(g_sem)
    norms = q.norm() * s.norm()
    if norms == 0:
        return math.nan
    return math.degrees(math.acos(float((torch.dot(q, s) / norms).clamp(-1.0, 1.0))))


@dataclass(frozen=True)
class QGRStep:
    """One fine-tuning step's regularized gradient and the angle between G_qua and G_sem."""

    grads: list[Tensor]
    angle_deg: float


def qgr_gradients(
    quality: Tensor,
    semantic: Tensor,
    params: Sequence[Tensor],
    lam: float = 5.0,
    per_tensor: bool = False,
    reduce: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> QGRStep:
    """G_qua = ∇L_ce (Eq. 3), G_sem = ∇L_kl (Eq. 7) over `params`, regularized by Eq. 8.

    Parameters a loss does not reach (e.g. the text context in L_kl) get a zero gradient. `reduce`
    runs on G_qua and on G_sem before Eq. 8 (data-parallel training passes an all-reduce mean, so
    every worker projects the same global gradients). Assign `grads` to `p.grad`, then step.
    """
    g_qua = list(torch.autograd.grad(quality, params, retain_graph=True, materialize_grads=True))
    g_sem = list(torch.autograd.grad(semantic, params, materialize_grads=True))
    if reduce is not None:
        g_qua, g_sem = reduce(g_qua), reduce(g_sem)
    return QGRStep(qgr(g_qua, g_sem, lam, per_tensor), gradient_angle(g_qua, g_sem))


def _flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])
