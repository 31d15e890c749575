"""GRMP-IQA's math: Eqs. 2-3, meta-tasks, the bi-level update (Eqs. 4-6) and QGR (Eqs. 7-8)."""
from __future__ import annotations

import math

import pytest
import torch

from rayiqa.methods.grmp_iqa import (
    apply_meta_update,
    build_meta_tasks,
    gradient_angle,
    mean_delta,
    meta_batches,
    model_quality_loss,
    p_high,
    qgr,
    qgr_gradients,
    quality_loss,
    semantic_kl,
    task_delta,
)
from rayiqa.models.clip_prompt import create_clip_prompt

# ---- Eqs. 2-3 -------------------------------------------------------------------------------


def test_p_high_and_quality_loss_match_hand_values() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    p = [math.exp(2) / (math.exp(2) + math.exp(1)), 1 / (1 + math.exp(3))]
    assert torch.allclose(p_high(logits), torch.tensor(p))
    y = [0.7, 0.0]
    expected = -sum(yi * math.log(pi) + (1 - yi) * math.log(1 - pi) for yi, pi in zip(y, p)) / 2
    assert quality_loss(logits, torch.tensor(y)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("labels", [[0.5, 1.2], [float("nan"), 0.1], [-0.1, 0.0], [0.5]])
def test_quality_loss_rejects_bad_labels(labels: list[float]) -> None:
    with pytest.raises(ValueError, match="labels"):
        quality_loss(torch.zeros(2, 2), torch.tensor(labels))


# ---- meta-tasks -----------------------------------------------------------------------------

TYPES = ["blur"] * 5 + ["noise"] * 10 + ["jpeg"] * 3


def test_meta_tasks_one_per_distortion_split_into_support_and_query() -> None:
    tasks = build_meta_tasks(TYPES, support_fraction=0.8, seed=3)
    assert [t.name for t in tasks] == ["blur", "jpeg", "noise"]
    sizes = {t.name: (len(t.support), len(t.query)) for t in tasks}
    assert sizes == {"blur": (4, 1), "jpeg": (2, 1), "noise": (8, 2)}
    for t in tasks:
        assert not set(t.support) & set(t.query)
        assert set(t.support) | set(t.query) == {i for i, name in enumerate(TYPES) if name == t.name}


def test_meta_tasks_are_seeded() -> None:
    assert build_meta_tasks(TYPES, seed=7) == build_meta_tasks(TYPES, seed=7)
    assert len({build_meta_tasks(TYPES, seed=s)[2].query for s in range(5)}) > 1


def test_meta_tasks_reject_unsplittable_type() -> None:
    with pytest.raises(ValueError, match="'contrast'"):
        build_meta_tasks(TYPES + ["contrast"])


def test_meta_batches_cover_every_task_once_in_groups_of_k() -> None:
    tasks = build_meta_tasks(["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"])
    batches = meta_batches(tasks, k=2, seed=1)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert sorted(t.name for b in batches for t in b) == ["a", "b", "c", "d", "e"]
    assert batches == meta_batches(tasks, k=2, seed=1)
    for k in (0, 6):
        with pytest.raises(ValueError, match="k must"):
            meta_batches(tasks, k=k, seed=1)


# ---- bi-level update, Eqs. 4-6, against hand-unrolled arithmetic ----------------------------
# Toy loss L(a, b; x, y) = (a·x + b − y)² / 2, so dL/da = r·x and dL/db = r with r = a·x + b − y.

TASKS = [((1.0, 2.0), (2.0, 1.0)), ((-1.0, 0.5), (0.5, -1.0))]  # (support (x, y), query (x, y))
ALPHA, BETA = 0.1, 0.5
THETA0 = (0.3, -0.2)


def toy_loss(theta, batch):
    x, y = batch
    return 0.5 * (theta["a"] * x + theta["b"] - y) ** 2


def toy_grad(a: float, b: float, batch: tuple[float, float]) -> tuple[float, float]:
    x, y = batch
    r = a * x + b - y
    return r * x, r


def hand_sgd_task(a: float, b: float, support, query) -> tuple[float, float]:
    ga, gb = toy_grad(a, b, support)
    a1, b1 = a - ALPHA * ga, b - ALPHA * gb  # Eq. 4
    ga, gb = toy_grad(a1, b1, query)
    return a1 - ALPHA * ga, b1 - ALPHA * gb  # Eq. 5


def hand_adam_task(a: float, b: float, support, query) -> tuple[float, float]:
    b1, b2, eps = 0.9, 0.999, 1e-8
    p, m, v = [a, b], [0.0, 0.0], [0.0, 0.0]  # fresh state for every task
    for t, batch in enumerate((support, query), start=1):
        g = toy_grad(p[0], p[1], batch)
        for j in range(2):
            m[j] = b1 * m[j] + (1 - b1) * g[j]
            v[j] = b2 * v[j] + (1 - b2) * g[j] ** 2
            m_hat, v_hat = m[j] / (1 - b1**t), v[j] / (1 - b2**t)
            p[j] -= ALPHA * m_hat / (math.sqrt(v_hat) + eps)
    return p[0], p[1]


@pytest.mark.parametrize(("optimizer", "hand_task"), [("sgd", hand_sgd_task), ("adam", hand_adam_task)])
def test_bilevel_update_matches_hand_unrolled(optimizer, hand_task) -> None:
    theta = {"a": torch.nn.Parameter(torch.tensor(THETA0[0], dtype=torch.float64)),
             "b": torch.nn.Parameter(torch.tensor(THETA0[1], dtype=torch.float64))}
    deltas = [task_delta(theta, s, q, toy_loss, ALPHA, optimizer) for s, q in TASKS]
    hand = [hand_task(*THETA0, s, q) for s, q in TASKS]
    for delta, (ai, bi) in zip(deltas, hand):
        assert delta["a"].item() == pytest.approx(THETA0[0] - ai, abs=1e-12)
        assert delta["b"].item() == pytest.approx(THETA0[1] - bi, abs=1e-12)
    apply_meta_update(theta, mean_delta(deltas), BETA)  # Eq. 6
    for j, name in enumerate("ab"):
        mean = sum(THETA0[j] - h[j] for h in hand) / len(hand)
        assert theta[name].item() == pytest.approx(THETA0[j] - BETA * mean, abs=1e-12)


def test_unknown_inner_optimizer_and_bad_logits_are_clear_errors() -> None:
    theta = {"a": torch.tensor(THETA0[0]), "b": torch.tensor(THETA0[1])}
    with pytest.raises(ValueError, match="inner_optimizer"):
        task_delta(theta, *TASKS[0], toy_loss, ALPHA, "rmsprop")
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        quality_loss(torch.zeros(2, 3), torch.zeros(2))


def test_sgd_and_adam_inner_steps_differ() -> None:
    theta = {"a": torch.tensor(THETA0[0]), "b": torch.tensor(THETA0[1])}
    s, q = TASKS[0]
    sgd, adam = task_delta(theta, s, q, toy_loss, ALPHA, "sgd"), task_delta(theta, s, q, toy_loss, ALPHA, "adam")
    assert abs(sgd["a"].item() - adam["a"].item()) > 1e-3


def test_meta_step_on_tiny_model_moves_only_prompts_by_beta_times_delta() -> None:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random weights"):
        model = create_clip_prompt("tiny")
    theta = model.prompt_parameters()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = lambda: (torch.randn(2, 3, 64, 64), torch.rand(2))  # noqa: E731
    loss_fn = model_quality_loss(model)
    deltas = [task_delta(theta, batch(), batch(), loss_fn, alpha=1e-3) for _ in range(2)]
    assert set(deltas[0]) == {"ctx", "visual_prompt.tokens"}
    assert all(d.abs().max() > 0 for d in deltas[0].values())
    assert all(p.grad is None for p in model.parameters())  # the inner loop leaves the model untouched
    delta = mean_delta(deltas)
    apply_meta_update(theta, delta, beta=1e-2)
    for name, p in model.named_parameters():
        expected = before[name] - 1e-2 * delta[name] if name in theta else before[name]
        assert torch.allclose(p, expected, atol=1e-7), name


# ---- QGR, Eqs. 7-8 --------------------------------------------------------------------------

G_QUA = [torch.tensor([3.0, 1.0]), torch.tensor([[2.0]])]
G_SEM = [torch.tensor([1.0, 0.0]), torch.tensor([[1.0]])]  # flat dot 5, |G_sem|² 2


def flat(gs):
    return torch.cat([g.reshape(-1) for g in gs])


def test_qgr_lambda_one_is_orthogonal_to_g_sem() -> None:
    out = qgr(G_QUA, G_SEM, lam=1.0)
    assert [o.shape for o in out] == [g.shape for g in G_QUA]
    assert torch.allclose(flat(out), torch.tensor([0.5, 1.0, -0.5]))  # (3,1,2) − 2.5·(1,0,1)
    assert torch.dot(flat(out), flat(G_SEM)).abs() < 1e-6


def test_qgr_default_lambda_five() -> None:
    assert torch.allclose(flat(qgr(G_QUA, G_SEM)), torch.tensor([-9.5, 1.0, -10.5]))  # (3,1,2) − 12.5·(1,0,1)


@pytest.mark.parametrize("g_sem", [[torch.tensor([-1.0, 1.0])], [torch.tensor([0.0, 1.0])]])
def test_qgr_leaves_g_qua_when_dot_not_positive(g_sem) -> None:
    g_qua = [torch.tensor([1.0, 0.0])]
    assert torch.equal(qgr(g_qua, g_sem, lam=5.0)[0], g_qua[0])


def test_qgr_lambda_zero_is_plain_g_qua() -> None:
    assert torch.equal(flat(qgr(G_QUA, G_SEM, lam=0.0)), flat(G_QUA))


def test_qgr_per_tensor_differs_from_flat() -> None:
    g_qua = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])]
    g_sem = [torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 0.0])]  # flat dot 1 − 2 < 0; per tensor +1 and −2
    assert torch.equal(flat(qgr(g_qua, g_sem, lam=1.0)), flat(g_qua))
    per = qgr(g_qua, g_sem, lam=1.0, per_tensor=True)
    assert torch.equal(per[0], torch.tensor([0.0, 0.0])) and torch.equal(per[1], g_qua[1])


def test_gradient_angle() -> None:
    assert gradient_angle([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]) == pytest.approx(45.0)
    assert gradient_angle([torch.tensor([2.0]), torch.tensor([0.0])], [torch.tensor([-1.0]), torch.tensor([0.0])]) \
        == pytest.approx(180.0)
    assert math.isnan(gradient_angle([torch.zeros(2)], [torch.tensor([1.0, 1.0])]))


def test_qgr_gradients_from_losses_with_reduce_and_unreached_parameter() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    u = torch.tensor([0.5], requires_grad=True)  # reached by the quality loss only
    quality = (w * torch.tensor([3.0, 1.0])).sum() + 4.0 * u.sum()  # G_qua = ((3,1), (4))
    semantic = (w * torch.tensor([1.0, 0.0])).sum()  # G_sem = ((1,0), (0)), dot 3
    step = qgr_gradients(quality, semantic, [w, u], lam=1.0)
    assert torch.allclose(step.grads[0], torch.tensor([0.0, 1.0]))
    assert torch.allclose(step.grads[1], torch.tensor([4.0]))
    assert step.angle_deg == pytest.approx(math.degrees(math.acos(3 / math.sqrt(26))))
    halve = lambda gs: [g / 2 for g in gs]  # noqa: E731  (a stand-in all-reduce mean)
    w.grad = None
    quality = (w * torch.tensor([3.0, 1.0])).sum()
    semantic = (w * torch.tensor([1.0, 0.0])).sum()
    step = qgr_gradients(quality, semantic, [w], lam=1.0, reduce=halve)
    assert torch.allclose(step.grads[0], torch.tensor([0.0, 0.5]))


def test_semantic_kl_matches_hand_value_and_gradient() -> None:
    sem = torch.tensor([[0.0, math.log(2.0)]])  # p_sem = (1/3, 2/3)
    qua = torch.zeros(1, 2, requires_grad=True)  # p_qua = (1/2, 1/2)
    kl = semantic_kl(sem, qua)
    expected = (1 / 3) * math.log((1 / 3) / 0.5) + (2 / 3) * math.log((2 / 3) / 0.5)
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    kl.backward()
    assert torch.allclose(qua.grad, torch.tensor([[0.5 - 1 / 3, 0.5 - 2 / 3]]))  # p_qua − p_sem
    assert semantic_kl(sem, sem.clone()).item() == pytest.approx(0.0, abs=1e-7)
