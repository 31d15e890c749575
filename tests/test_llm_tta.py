"""LLM-TTA's math (Eq. 2, clusters, Eq. 3), its adaptation loop and the TTA-IQA / FA-TTA-IQA baselines."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from rayiqa.config.tta import TTAParams
from rayiqa.methods.llm_tta import (
    DEFAULT_PROMPT,
    PROMPTS,
    adapt_and_predict,
    adapt_norm_layers,
    cluster_contrastive_objective,
    ensemble_scores,
    group_contrastive_loss,
    llm_quality_score,
    predict,
    projection_head,
    quality_clusters,
    rank_batch,
)
from rayiqa.methods.tta_baselines import (
    DISTORTIONS,
    distort,
    fa_tta_iqa_adapt_and_predict,
    feature_affinity_clusters,
    rank_loss,
    tta_iqa_adapt_and_predict,
)
from rayiqa.models.backbones import create_backbone, wrap_module
from rayiqa.models.backbones.vgg import create_vgg16_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    # Images that differ in brightness and texture, so BN statistics and features differ.
    base = torch.rand(8, 3, 64, 64, generator=g)
    levels = torch.linspace(0.2, 0.9, 8).view(8, 1, 1, 1)
    return (0.5 * base + 0.5 * levels).clamp(0, 1)


RANKER = np.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4])


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def norm_keys(backbone) -> set[str]:
    names = {id(m): n for n, m in backbone.named_modules()}
    return {f"{names[id(m)]}.{k}" for m in backbone.norm_layers() for k in m.state_dict()}


# ---- Eq. 2 and the ranking -------------------------------------------------------------------

def test_eq2_is_softmax_over_good_and_poor_logits():
    # e^2 / (e^2 + e^0) and e^1000 / (e^1000 + e^999) = 1 / (1 + e^-1), worked by hand.
    got = llm_quality_score([2.0, 1000.0, -3.0], [0.0, 999.0, -3.0])
    assert got == pytest.approx([math.e**2 / (math.e**2 + 1), 1 / (1 + math.exp(-1)), 0.5], abs=1e-12)


def test_prompts_are_the_papers_and_prompt2_is_default():
    assert DEFAULT_PROMPT == PROMPTS[2] == "The quality of the image is"
    assert PROMPTS[1] == "Rate the quality of the image"
    assert PROMPTS[3].endswith("Format: Score: x")


def test_eq2_rejects_bad_logits():
    with pytest.raises(ValueError, match="logit_good has non-finite values at positions \\[1\\]"):
        llm_quality_score([0.0, float("nan")], [0.0, 0.0])
    with pytest.raises(ValueError, match="3 entries but logit_poor has 2"):
        llm_quality_score([0.0, 1.0, 2.0], [0.0, 0.0])


def test_ranking_clusters_and_ensemble_on_hand_made_scores():
    assert rank_batch(RANKER).tolist() == [1, 6, 4, 3, 7, 0, 5, 2]
    c = quality_clusters(RANKER, k=2)
    assert c.high.tolist() == [1, 6] and c.low.tolist() == [2, 5]
    c3 = quality_clusters(RANKER, k=3)
    assert c3.high.tolist() == [1, 6, 4] and c3.low.tolist() == [2, 5, 0]
    # ties keep batch order
    assert quality_clusters([0.5, 0.5, 0.5, 0.5], k=2).high.tolist() == [0, 1]
    assert ensemble_scores([[0.2, 0.8, 0.5], [0.4, 0.6, 0.1]]) == pytest.approx([0.3, 0.7, 0.3])


def test_cluster_and_ensemble_errors_name_the_problem():
    with pytest.raises(ValueError, match="batch of 3 images is smaller than 2\\*k = 4"):
        quality_clusters([0.1, 0.2, 0.3], k=2)
    with pytest.raises(ValueError, match="k must be >= 2"):
        quality_clusters(RANKER, k=1)
    with pytest.raises(ValueError, match="different numbers of images"):
        ensemble_scores([[0.1, 0.2], [0.3]])
    with pytest.raises(ValueError, match="ranker 1 scores has non-finite"):
        ensemble_scores([[0.1, 0.2], [0.3, float("inf")]])


# ---- Eq. 3 -----------------------------------------------------------------------------------

# Four projected features, two per cluster, whose cosines are easy by hand:
# h1=(1,0), h2=(3,4), l1=(0,1), l2=(-1,1):  cos(h1,h2)=3/5, cos(h1,l1)=0, cos(h1,l2)=-1/sqrt2,
# cos(h2,l1)=4/5, cos(h2,l2)=(−3+4)/(5 sqrt2)=1/(5 sqrt2), cos(l1,l2)=1/sqrt2.
H = torch.tensor([[1.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
L = torch.tensor([[0.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
R2 = math.sqrt(2)
S_H1H2, S_H1L1, S_H1L2, S_H2L1, S_H2L2, S_L1L2 = 0.6, 0.0, -1 / R2, 0.8, 1 / (5 * R2), 1 / R2
TAU = 0.5
E = lambda s: math.exp(s / TAU)  # noqa: E731


def test_eq3_paper_form_against_hand_values():
    # -log(e^{s_ij/τ} / Σ_{k in other cluster} e^{s_ik/τ}) per anchor, then the mean of the four.
    per_anchor = [
        -math.log(E(S_H1H2) / (E(S_H1L1) + E(S_H1L2))),
        -math.log(E(S_H1H2) / (E(S_H2L1) + E(S_H2L2))),
        -math.log(E(S_L1L2) / (E(S_H1L1) + E(S_H2L1))),
        -math.log(E(S_L1L2) / (E(S_H1L2) + E(S_H2L2))),
    ]
    expected = sum(per_anchor) / 4
    assert group_contrastive_loss(H, L, TAU, "paper").item() == pytest.approx(expected, abs=1e-12)


def test_eq3_tta_iqa_form_against_hand_values():
    # -log( mean over anchors of e^{pos/τ} / (e^{pos/τ} + N) ), with one positive per anchor here.
    ratios = [
        E(S_H1H2) / (E(S_H1H2) + E(S_H1L1) + E(S_H1L2)),
        E(S_H1H2) / (E(S_H1H2) + E(S_H2L1) + E(S_H2L2)),
        E(S_L1L2) / (E(S_L1L2) + E(S_H1L1) + E(S_H2L1)),
        E(S_L1L2) / (E(S_L1L2) + E(S_H1L2) + E(S_H2L2)),
    ]
    expected = -math.log(sum(ratios) / 4)
    assert group_contrastive_loss(H, L, TAU, "tta-iqa").item() == pytest.approx(expected, abs=1e-12)


# k = 3: two positives per anchor, so a per-anchor mean over the wrong count shows. Vectors whose
# normalised cosines are exact: h1=(1,0), h2=(3,4), h3=(4,3); l1=(0,1), l2=(-3,4), l3=(-1,0).
H3 = torch.tensor([[1.0, 0.0], [3.0, 4.0], [4.0, 3.0]], dtype=torch.float64)
L3 = torch.tensor([[0.0, 1.0], [-3.0, 4.0], [-1.0, 0.0]], dtype=torch.float64)
SAME3 = {  # anchor: ([cosine to each other member of its cluster], [cosine to each member of the other cluster])
    "h1": ([0.6, 0.8], [0.0, -0.6, -1.0]),
    "h2": ([0.6, 0.96], [0.8, 0.28, -0.6]),
    "h3": ([0.8, 0.96], [0.6, 0.0, -0.8]),
    "l1": ([0.8, 0.0], [0.0, 0.8, 0.6]),
    "l2": ([0.8, 0.6], [-0.6, 0.28, 0.0]),
    "l3": ([0.0, 0.6], [-1.0, -0.6, -0.8]),
}


def test_eq3_paper_form_k3_against_hand_values():
    # per anchor: the mean over its 2 positives of -log(e^{s_ij/τ} / Σ_{k in other cluster} e^{s_ik/τ}); mean of 6
    per_anchor = []
    for positives, others in SAME3.values():
        denominator = sum(E(s) for s in others)
        per_anchor.append(sum(-math.log(E(s) / denominator) for s in positives) / 2)
    expected = sum(per_anchor) / 6
    assert group_contrastive_loss(H3, L3, TAU, "paper").item() == pytest.approx(expected, abs=1e-12)


def test_eq3_tta_iqa_form_k3_against_hand_values():
    # pos(i) = mean of its 2 positive cosines; -log( mean over 6 anchors of e^{pos/τ} / (e^{pos/τ} + N(i)) )
    ratios = []
    for positives, others in SAME3.values():
        pos = sum(positives) / 2
        ratios.append(E(pos) / (E(pos) + sum(E(s) for s in others)))
    expected = -math.log(sum(ratios) / 6)
    assert group_contrastive_loss(H3, L3, TAU, "tta-iqa").item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("form", ["paper", "tta-iqa"])
def test_eq3_invariants(form):
    g = torch.Generator().manual_seed(0)
    zh, zl = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    ref = group_contrastive_loss(zh, zl, 0.1, form)
    # cosine similarity: positive rescaling of any vector changes nothing
    scaled = zh * torch.tensor([[2.0], [0.5], [7.0]], dtype=torch.float64)
    assert group_contrastive_loss(scaled, zl, 0.1, form).item() == pytest.approx(ref.item(), abs=1e-10)
    # order inside a cluster and which cluster is called "high" change nothing
    assert group_contrastive_loss(zh[[2, 0, 1]], zl.flip(0), 0.1, form).item() == pytest.approx(ref.item(), abs=1e-10)
    assert group_contrastive_loss(zl, zh, 0.1, form).item() == pytest.approx(ref.item(), abs=1e-10)
    # tight, well-separated clusters score lower than mixed ones
    tight = group_contrastive_loss(torch.tensor([[1.0, 0.0], [1.0, 0.1]]), torch.tensor([[-1.0, 0.0], [-1.0, 0.1]]), 0.1, form)
    mixed = group_contrastive_loss(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([[1.0, 0.1], [-1.0, 0.1]]), 0.1, form)
    assert tight < mixed


def test_eq3_rejects_singleton_cluster_and_unknown_form():
    with pytest.raises(ValueError, match="each cluster needs >= 2 members"):
        group_contrastive_loss(H[:1], L, TAU)
    with pytest.raises(ValueError, match="form must be 'paper' or 'tta-iqa'"):
        group_contrastive_loss(H, L, TAU, "other")  # type: ignore[arg-type]


def test_projection_head_is_seeded_frozen_sigmoid():
    a, b, c = projection_head(16, 256, seed=2021), projection_head(16, 256, seed=2021), projection_head(16, 256, seed=1)
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert all(not p.requires_grad for p in a.parameters())
    out = a(torch.randn(4, 16))
    assert out.shape == (4, 256) and out.min() > 0 and out.max() < 1
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    projection_head(16, seed=3)  # building a head leaves the global RNG stream untouched
    assert torch.equal(torch.rand(1), expected)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="tau=0"):
        TTAParams(tau=0)
    with pytest.raises(ValueError, match="loss_form='x'"):
        TTAParams(loss_form="x")  # type: ignore[arg-type]


# ---- the adaptation loop ----------------------------------------------------------------------

PRESETS = ["tiny-cnn", "tiny-vit", "tiny-uiqa"]


@pytest.mark.parametrize("name", PRESETS)
def test_only_norm_parameters_change_while_adapting(name, batch):
    backbone = create_backbone(name)
    source = state_copy(backbone)
    seen: list[dict[str, torch.Tensor]] = []
    objective = cluster_contrastive_objective(batch, quality_clusters(RANKER), TTAParams())

    def recording(embed):
        seen.append(state_copy(backbone))  # state after the previous iterations' updates
        return objective(embed)

    adapt_norm_layers(backbone, batch, recording, TTAParams(iterations=3))
    adapted = seen[-1]
    changed = {k for k in source if not torch.equal(source[k], adapted[k])}
    params = dict(backbone.named_parameters())
    norm_affine = {k for k in norm_keys(backbone) if k in params}
    assert {k for k in changed if k in params} == norm_affine  # every norm affine param moved, nothing else
    assert changed <= norm_keys(backbone)  # buffers that moved are norm running statistics only
    if name == "tiny-cnn":
        assert any(k.endswith("running_mean") for k in changed)  # BN used batch statistics


@pytest.mark.parametrize("name", PRESETS)
def test_source_state_is_restored_exactly_after_a_batch(name, batch):
    backbone = create_backbone(name)
    source = copy.deepcopy(backbone.state_dict())
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    result = adapt_and_predict(backbone, batch, RANKER)
    after = backbone.state_dict()
    assert after.keys() == source.keys()
    assert all(torch.equal(after[k], source[k]) for k in source)  # incl. running stats, num_batches_tracked
    assert {n: p.requires_grad for n, p in backbone.named_parameters()} == flags
    assert not any(m.training for m in backbone.modules())
    assert result.base_scores == pytest.approx(predict(backbone, batch), abs=0)
    assert not np.allclose(result.scores, result.base_scores)  # the adaptation did something
    assert result.clusters.high.tolist() == [1, 6] and result.clusters.low.tolist() == [2, 5]
    assert len(result.losses) == 10


def test_repeat_batches_are_identical_fresh_optimiser_and_source(batch):
    backbone = create_backbone("tiny-cnn")
    first = adapt_and_predict(backbone, batch, RANKER)
    adapt_and_predict(backbone, batch.flip(0), RANKER)  # a different batch in between
    again = adapt_and_predict(backbone, batch, RANKER)
    assert np.array_equal(first.scores, again.scores) and first.losses == again.losses


def test_adaptation_reduces_the_loss_on_a_tiny_backbone(batch):
    for form in ("paper", "tta-iqa"):
        result = adapt_and_predict(create_backbone("tiny-cnn"), batch, RANKER, TTAParams(loss_form=form))
        assert result.final_loss < result.losses[0]
        assert all(np.isfinite(result.losses))


def test_state_is_restored_when_adaptation_fails(batch):
    backbone = create_backbone("tiny-cnn")
    source = state_copy(backbone)
    objective = cluster_contrastive_objective(batch, quality_clusters(RANKER), TTAParams())
    calls = []

    def failing(embed):
        calls.append(1)
        return objective(embed) if len(calls) < 3 else torch.tensor(float("nan"))

    with pytest.raises(FloatingPointError, match="not finite at iteration 2"):
        adapt_norm_layers(backbone, batch, failing, TTAParams())
    assert all(torch.equal(v, source[k]) for k, v in backbone.state_dict().items())


def test_bad_batches_give_clear_errors(batch):
    backbone = create_backbone("tiny-cnn")
    with pytest.raises(ValueError, match="7 ranker scores for a batch of 8 images"):
        adapt_and_predict(backbone, batch, RANKER[:7])
    with pytest.raises(ValueError, match="ranker_scores has non-finite values at positions \\[3\\]"):
        adapt_and_predict(backbone, batch, np.where(np.arange(8) == 3, np.nan, RANKER))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        adapt_and_predict(backbone, batch * 255, RANKER)
    with pytest.raises(ValueError, match="must be \\(B, 3, H, W\\)"):
        adapt_and_predict(backbone, batch[:, :1], RANKER)


def test_wrapped_user_module_adapts_and_restores(batch):
    class UserNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2), nn.GroupNorm(2, 8), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))

    def pooled(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net.body(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    net = UserNet()
    backbone = wrap_module(net, pooled, net.head)
    assert [type(m).__name__ for m in backbone.norm_layers()] == ["BatchNorm2d", "GroupNorm"]  # head BN excluded
    source = state_copy(backbone)
    result = adapt_and_predict(backbone, batch, RANKER)
    assert all(torch.equal(v, source[k]) for k, v in backbone.state_dict().items())
    assert result.final_loss < result.losses[0]
    assert result.scores.shape == (8,)


# ---- baselines ----------------------------------------------------------------------------------

def test_rank_loss_against_hand_value():
    z = torch.zeros(1, 2)
    # weak copy at distance 1, strong at distance 3: -log σ(3 - 1) = log(1 + e^-2)
    loss = rank_loss(z, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


@pytest.mark.parametrize("kind", DISTORTIONS)
def test_strong_distortion_moves_images_further_than_weak(kind, batch):
    g = torch.Generator().manual_seed(0)
    weak, strong = distort(batch, kind, "weak", g), distort(batch, kind, "strong", g)
    assert weak.shape == strong.shape == batch.shape and 0 <= strong.min() and strong.max() <= 1
    assert ((strong - batch) ** 2).mean() > ((weak - batch) ** 2).mean() > 0


def test_tta_iqa_clusters_from_base_model_and_restores(batch):
    backbone = create_backbone("tiny-cnn")
    source = state_copy(backbone)
    result = tta_iqa_adapt_and_predict(backbone, batch)
    expected = quality_clusters(result.base_scores, 2)
    assert result.clusters.high.tolist() == expected.high.tolist()
    assert result.clusters.low.tolist() == expected.low.tolist()
    assert result.distortions is not None and set(result.distortions) <= set(DISTORTIONS) and len(result.distortions) == 8
    assert result.final_loss < result.losses[0]
    assert all(torch.equal(v, source[k]) for k, v in backbone.state_dict().items())


def test_feature_affinity_clusters_on_hand_made_features():
    base = np.array([0.1, 0.4, 0.9, 0.3, 0.2, 0.5])  # anchor = image 2
    angles = np.radians([170, 20, 0, 90, 120, 45])  # cosine to the anchor falls with the angle
    feats = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1))
    c = feature_affinity_clusters(base, feats, k=2)
    assert c.high.tolist() == [2, 1] and c.low.tolist() == [0, 4]
    c3 = feature_affinity_clusters(base, feats, k=3)
    assert c3.high.tolist() == [2, 1, 5] and c3.low.tolist() == [0, 4, 3]


def test_fa_tta_iqa_runs_with_random_vgg16_and_restores():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(8, 3, 32, 32, generator=g)
    backbone = create_backbone("tiny-cnn")
    source = state_copy(backbone)
    torch.manual_seed(0)
    result = fa_tta_iqa_adapt_and_predict(backbone, images, create_vgg16_features(weights=None))
    assert result.clusters.high[0] == int(np.argmax(result.base_scores))
    assert len(set(result.clusters.high) | set(result.clusters.low)) == 4
    assert all(torch.equal(v, source[k]) for k, v in backbone.state_dict().items())
    assert np.isfinite(result.scores).all()
