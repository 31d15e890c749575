"""Tests for the MLLM prompting study's math: C (Eq. 1), ranking aggregation (Eq. 2 and alternatives),
pair samplers and difficult-sample selection (Eqs. 3-5), against hand values and independent formulas."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, optimize, sparse, stats

from rayiqa.methods import psychophysics as P


def _simulate(mu: np.ndarray, pairs: np.ndarray, seed: int) -> list[tuple[int, int, str]]:
    """Thurstone Case V outcomes: x_i preferred with probability Phi(mu_i - mu_j)."""
    rng = np.random.default_rng(seed)
    p = stats.norm.cdf(mu[pairs[:, 0]] - mu[pairs[:, 1]])
    wins = rng.random(len(pairs)) < p
    return [(int(i), int(j), "i" if w else "j") for (i, j), w in zip(pairs, wins)]


# ------------------------------------------------------------------ C (Eq. 1)

COMPARISONS = [(0, 1, "i"), (0, 1, "i"), (1, 2, "j"), (0, 2, "tie"), (2, 0, "j")]


@pytest.mark.parametrize(
    ("tie", "expected"),
    [
        ("half", [[0, 2, 1.5], [0, 0, 0], [0.5, 1, 0]]),
        ("one", [[0, 2, 2], [0, 0, 0], [1, 1, 0]]),
    ],
)
def test_preference_matrix_hand_counts_both_tie_rules(tie, expected):
    C = P.preference_matrix(COMPARISONS, 3, tie=tie)
    assert sparse.issparse(C)
    np.testing.assert_array_equal(C.toarray(), np.array(expected, dtype=float))


def test_preference_matrix_default_tie_is_half():
    np.testing.assert_array_equal(P.preference_matrix([(0, 1, "tie")], 2).toarray(), [[0, 0.5], [0.5, 0]])


def test_preference_matrix_from_rankings():
    C = P.preference_matrix_from_rankings([[2, 0, 1], [3, 2]], 4)
    expected = np.zeros((4, 4))
    expected[2, 0] = expected[2, 1] = expected[0, 1] = expected[3, 2] = 1
    np.testing.assert_array_equal(C.toarray(), expected)
    assert len(P.ranking_to_comparisons([5, 1, 4, 0])) == 6  # L(L-1)/2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ((0, 1, "better"), "comparison 1 .*outcome"),
        ((0, 7, "i"), "comparison 1 .*outside"),
        ((2, 2, "i"), "comparison 1 .*itself"),
        ((0, 1.0, "i"), "comparison 1 .*not an integer"),
    ],
)
def test_preference_matrix_names_the_bad_comparison(bad, message):
    with pytest.raises(ValueError, match=message):
        P.preference_matrix([(0, 1, "i"), bad], 3)


def test_ranking_with_repeats_is_rejected():
    with pytest.raises(ValueError, match="repeats"):
        P.ranking_to_comparisons([1, 2, 1])


def test_matrix_with_nonzero_diagonal_is_rejected():
    with pytest.raises(ValueError, match="diagonal"):
        P.thurstone_case_v_map(np.array([[1.0, 1.0], [0.0, 0.0]]))


# ------------------------------------------------------------------ Thurstone Case V MAP (Eq. 2)


def test_thurstone_map_recovers_known_scores():
    rng = np.random.default_rng(0)
    mu_true = rng.normal(size=20)
    C = P.preference_matrix(_simulate(mu_true, P.sample_uniform_pairs(20, 400, seed=1), seed=2), 20)
    mu = P.thurstone_case_v_map(C)
    assert stats.spearmanr(mu, mu_true).statistic > 0.9
    assert abs(mu.sum()) < 1e-8


def test_thurstone_map_is_the_unconstrained_stationary_point():
    """The constraint sum mu = 0 is inactive: the gradient of the negated Eq. 2 vanishes at the answer."""
    rng = np.random.default_rng(3)
    C = P.preference_matrix(_simulate(rng.normal(size=15), P.sample_uniform_pairs(15, 200, 4), 5), 15)
    _, grad = P.thurstone_case_v_objective(P.thurstone_case_v_map(C), C)
    assert np.max(np.abs(grad)) < 1e-6


def test_thurstone_map_matches_constrained_slsqp_on_dense_formula():
    """The reference code's route (SLSQP with the equality constraint) on an independently written objective."""
    C = np.array([[0, 3, 1, 2], [1, 0, 2, 0], [2, 1, 0, 4], [0, 1, 0.5, 0]], dtype=float)

    def negative_eq2(mu):
        return -(np.sum(C * stats.norm.logcdf(mu[:, None] - mu[None, :])) - mu @ mu / 2)

    ref = optimize.minimize(
        negative_eq2, np.zeros(4), method="SLSQP", constraints={"type": "eq", "fun": np.sum},
        options={"ftol": 1e-14, "maxiter": 500},
    )
    np.testing.assert_allclose(P.thurstone_case_v_map(C), ref.x, atol=1e-5)
    np.testing.assert_allclose(P.thurstone_case_v_objective(ref.x, C)[0], negative_eq2(ref.x), rtol=1e-12)


def test_thurstone_gradient_matches_central_differences():
    rng = np.random.default_rng(6)
    C = P.preference_matrix(_simulate(rng.normal(size=12), P.sample_uniform_pairs(12, 150, 7), 8), 12)
    mu = rng.normal(scale=2.0, size=12)
    _, grad = P.thurstone_case_v_objective(mu, C)
    h = 1e-6
    numeric = np.array([
        (P.thurstone_case_v_objective(mu + h * e, C)[0] - P.thurstone_case_v_objective(mu - h * e, C)[0]) / (2 * h)
        for e in np.eye(12)
    ])
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)
    assert optimize.check_grad(
        lambda x: P.thurstone_case_v_objective(x, C)[0], lambda x: P.thurstone_case_v_objective(x, C)[1], mu
    ) < 1e-4 * np.linalg.norm(grad)


def test_thurstone_objective_stays_finite_for_hopeless_preferences():
    """log Phi via log_ndtr: a preference against a 40-sigma gap is a large finite penalty, not -inf."""
    value, grad = P.thurstone_case_v_objective(np.array([-20.0, 20.0]), np.array([[0.0, 1.0], [0.0, 0.0]]))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx(-stats.norm.logcdf(-40.0) + 400.0, rel=1e-10)


def test_thurstone_map_converges_on_unanimous_heavy_counts():
    """Every pair of 15 items compared 200 times, the higher index always winning: finite, ordered, centred."""
    C = np.triu(np.full((15, 15), 200.0), k=1).T  # C[i, j] = 200 for i > j
    mu = P.thurstone_case_v_map(C)
    assert np.all(np.isfinite(mu)) and np.all(np.diff(mu) > 0)
    assert abs(mu.sum()) < 1e-8


def test_thurstone_map_scales_to_2000_items_sparse():
    mu_true = np.linspace(-3, 3, 2000)
    pairs = P.sample_uniform_pairs(2000, 20000, seed=9)
    C = P.preference_matrix(_simulate(mu_true, pairs, seed=10), 2000)
    mu = P.thurstone_case_v_map(C)
    assert abs(mu.sum()) < 1e-8
    clear = np.abs(mu_true) > 1.5
    assert np.all(np.sign(mu[clear]) == np.sign(mu_true[clear]))
    assert stats.spearmanr(mu, mu_true).statistic > 0.9


def test_sparse_and_dense_inputs_agree():
    C = P.preference_matrix(COMPARISONS, 3)
    np.testing.assert_allclose(P.thurstone_case_v_map(C), P.thurstone_case_v_map(C.toarray()), atol=1e-9)


# ------------------------------------------------------------------ alternatives


def test_every_method_ranks_a_clearly_ordered_case():
    mu_true = np.linspace(-2, 2, 12)
    pairs = P.sample_uniform_pairs(12, 600, seed=11)
    comparisons = _simulate(mu_true, pairs, seed=12)
    for method in ("thurstone_map", "thurstone_mosteller", "perron_frobenius", "elo"):
        scores = P.rank_aggregate(comparisons, method, n_items=12)
        assert stats.spearmanr(scores, mu_true).statistic > 0.9, method


def test_thurstone_mosteller_complete_design_closed_form():
    """For a complete design the least-squares solution is the row mean of z (Mosteller 1951)."""
    C = np.array([[0, 3, 5], [1, 0, 2], [0, 2, 0]], dtype=float)
    n = C + C.T
    z = stats.norm.ppf((C + 0.5) / (n + 1))
    np.fill_diagonal(z, 0.0)
    expected = z.mean(axis=1) - z.mean()
    np.testing.assert_allclose(P.thurstone_mosteller(C), expected, atol=1e-9)


def test_perron_frobenius_two_items_hand_value():
    # A = [[0, 4/6], [2/6, 0]] (+ teleport): r0 / r1 = sqrt(a01 / a10) = sqrt(2).
    r = P.perron_frobenius(np.array([[0, 3], [1, 0]], dtype=float))
    np.testing.assert_allclose(r, np.array([np.sqrt(2), 1]) / (1 + np.sqrt(2)), rtol=1e-5)


def test_perron_frobenius_is_the_eigenvector_of_keeners_matrix():
    C = np.array([[0, 3, 1, 0], [1, 0, 2, 2], [1, 0, 0, 4], [0, 1, 1, 0]], dtype=float)
    n = C + C.T
    A = np.where(n > 0, (C + 1) / (n + 2), 0.0) / (n > 0).sum(axis=1, keepdims=True) + 1e-6 / 4
    values, vectors = np.linalg.eig(A)
    expected = np.real(vectors[:, np.argmax(np.real(values))])
    np.testing.assert_allclose(P.perron_frobenius(C), expected / expected.sum(), rtol=1e-6)


def test_elo_hand_values():
    ratings = P.elo([(0, 1, "i")], 2)
    np.testing.assert_allclose(ratings, [1516.0, 1484.0])
    ratings = P.elo([(0, 1, "i"), (1, 0, "tie")], 2, k_factor=10)
    first = 10 * (1 - 0.5)
    expected_1 = 1 / (1 + 10 ** ((1500 + first - (1500 - first)) / 400))
    second = 10 * (0.5 - expected_1)
    np.testing.assert_allclose(ratings, [1500 + first - second, 1500 - first + second])


def test_rank_aggregate_inputs_options_and_errors():
    C = P.preference_matrix(COMPARISONS, 3)
    np.testing.assert_allclose(P.rank_aggregate(COMPARISONS), P.rank_aggregate(C), atol=1e-9)
    scaled = P.rank_aggregate(C, rescale=True)
    assert scaled.min() == 0 and scaled.max() == 100
    np.testing.assert_array_equal(np.argsort(scaled), np.argsort(P.rank_aggregate(C)))
    with pytest.raises(ValueError, match="elo"):
        P.rank_aggregate(C, "elo")
    with pytest.raises(ValueError, match="unknown method"):
        P.rank_aggregate(C, "borda")


# ------------------------------------------------------------------ samplers


def test_uniform_pairs_are_seeded_distinct_and_cover_items():
    pairs = P.sample_uniform_pairs(10, 5000, seed=3)
    assert pairs.shape == (5000, 2) and np.all(pairs[:, 0] != pairs[:, 1])
    assert pairs.min() == 0 and pairs.max() == 9
    np.testing.assert_array_equal(pairs, P.sample_uniform_pairs(10, 5000, seed=3))
    assert not np.array_equal(pairs, P.sample_uniform_pairs(10, 5000, seed=4))
    counts = np.bincount(pairs.ravel(), minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3  # each item in ~1000 of the 10000 slots


@pytest.mark.parametrize(("group_size", "groups_per_item"), [(2, 5), (4, 2)])
def test_reference_code_group_designs(group_size, groups_per_item):
    groups = P.sample_groups(30, group_size, groups_per_item, seed=0)
    assert groups.shape == (30 * groups_per_item, group_size)
    assert all(len(set(row)) == group_size for row in groups.tolist())
    anchors = np.repeat(np.arange(30), groups_per_item)
    assert all(a in row for a, row in zip(anchors, groups.tolist()))
    assert np.all(np.bincount(groups.ravel(), minlength=30) >= groups_per_item)
    unshuffled = P.sample_groups(30, group_size, groups_per_item, seed=0, shuffle=False)
    np.testing.assert_array_equal(unshuffled[:, 0], anchors)


def _exact_information_gain(m: float, var: float) -> float:
    """H[Phi(m / sqrt(1 + var))] - E_{d ~ N(m, var)} H[Phi(d)], by numerical quadrature."""

    def h(p):
        p = np.clip(p, 1e-300, 1 - 1e-16)
        return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))

    s = np.sqrt(var)
    expected = integrate.quad(lambda d: h(stats.norm.cdf(d)) * stats.norm.pdf(d, m, s), m - 12 * s, m + 12 * s)[0]
    return float(h(stats.norm.cdf(m / np.sqrt(1 + var))) - expected)


@pytest.mark.parametrize(("m", "var"), [(0.0, 0.01), (0.0, 4.0), (1.0, 1.0), (2.0, 0.5), (3.0, 10.0)])
def test_information_gain_matches_quadrature(m, var):
    assert P.expected_information_gain(m, var) == pytest.approx(_exact_information_gain(m, var), abs=5e-3)


def test_posterior_variance_is_inverse_hessian_diagonal():
    """Against the diagonal of a finite-difference Hessian of the negated Eq. 2 (from its gradient)."""
    rng = np.random.default_rng(13)
    C = P.preference_matrix(_simulate(rng.normal(size=8), P.sample_uniform_pairs(8, 60, 14), 15), 8)
    mu = rng.normal(size=8)
    h = 1e-5

    def grad(x):
        return P.thurstone_case_v_objective(x, C)[1]

    hessian_diag = np.array([(grad(mu + h * e)[k] - grad(mu - h * e)[k]) / (2 * h) for k, e in enumerate(np.eye(8))])
    np.testing.assert_allclose(P.posterior_variance(C, mu), 1 / hessian_diag, rtol=1e-6)


def test_active_sampler_prefers_uncertain_close_pairs():
    # Items 0 and 1 were compared 50 times (split evenly); 2 and 3 never: (2, 3) is the most informative.
    C = np.zeros((4, 4))
    C[0, 1] = C[1, 0] = 25
    pairs = P.sample_active_pairs(C, 6)
    assert {tuple(sorted(p)) for p in pairs.tolist()} == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
    assert tuple(pairs[0]) == (2, 3) and tuple(pairs[-1]) == (0, 1)
    # With equal uncertainty, closer scores win.
    far_close = P.sample_active_pairs(np.zeros((3, 3)), 3, mu=np.array([0.0, 0.2, 3.0]))
    assert tuple(far_close[0]) == (0, 1) and tuple(far_close[-1]) == (0, 2)


# ------------------------------------------------------------------ difficult samples (Eqs. 3-5)

Q_W = np.array([0.9, 0.1, 0.5, 0.8, 0.3, 0.6, 0.2, 0.7])
Q = np.array([0.2, 0.3, 0.45, 0.1, 0.9, 0.55, 0.6, 0.0])
SIGMA = np.array([0.1, 0.2, 0.05, 0.9, 0.3, 0.1, 0.15, 0.6])
FEATURES = np.array([
    [1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [1.0, 0.05, 0.0],
    [0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.1, 0.0, 3.0], [2.0, 0.1, 0.1],
])


def test_variance_normalized_error_hand_value():
    np.testing.assert_allclose(P.variance_normalized_error([3.0, 1.0], [1.0, 1.0], [1.0, 0.0]), [4 / 2, 0.0])
    np.testing.assert_allclose(P.variance_normalized_error([3.0], [1.0], [1.0], epsilon=3.0), [1.0])


def _brute_force_greedy(error, features, n, lam, kind):
    """Eq. (5) re-evaluated from scratch at each step; Div written as the mean over the set of the MSE
    (mse) or as 1 - cosine to the selected centroid (cosine)."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    selected = []
    for _ in range(n):
        best, best_value = None, -np.inf
        for x in range(len(error)):
            if x in selected:
                continue
            if not selected:
                div = 0.0
            elif kind == "mse":
                div = np.mean([np.mean((f[x] - f[s]) ** 2) for s in selected])
            else:
                centroid = f[selected].mean(axis=0)
                div = 1 - f[x] @ centroid / np.linalg.norm(centroid)
            if error[x] + lam * div > best_value:
                best, best_value = x, error[x] + lam * div
        selected.append(best)
    return selected


@pytest.mark.parametrize(("lam", "kind"), [(0.01, "mse"), (5.0, "mse"), (0.2, "cosine")])
def test_nr_greedy_matches_brute_force(lam, kind):
    error = P.variance_normalized_error(Q_W, Q, SIGMA)
    chosen = P.select_difficult_nr(Q_W, Q, SIGMA, FEATURES, N=5, lam=lam, kind=kind)
    assert chosen.indices.tolist() == _brute_force_greedy(error, FEATURES, 5, lam, kind)
    assert chosen.objective[0] == pytest.approx(error[chosen.indices[0]])


def test_diversity_changes_the_picks_when_it_weighs_enough():
    by_error = P.select_difficult_nr(Q_W, Q, SIGMA, FEATURES, N=5, lam=0.0).indices.tolist()
    assert P.select_difficult_nr(Q_W, Q, SIGMA, FEATURES, N=5, lam=5.0).indices.tolist() != by_error


def test_lambda_zero_picks_largest_normalized_errors():
    error = (Q_W - Q) ** 2 / (SIGMA**2 + 1.0)
    chosen = P.select_difficult_nr(Q_W, Q, SIGMA, FEATURES, N=8, lam=0.0)
    assert chosen.indices.tolist() == np.argsort(-error).tolist()
    np.testing.assert_allclose(chosen.objective, np.sort(error)[::-1])


def test_feature_length_does_not_matter():
    scaled = FEATURES * np.arange(1, 9)[:, None]
    a = P.select_difficult_nr(Q_W, Q, SIGMA, FEATURES, N=4, lam=5.0).indices
    np.testing.assert_array_equal(a, P.select_difficult_nr(Q_W, Q, SIGMA, scaled, N=4, lam=5.0).indices)


def test_fr_selection_eq3_and_eq4():
    reference = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    ref_features = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    error = P.variance_normalized_error(Q_W, Q, SIGMA)
    mean_error = np.array([error[reference == y].mean() for y in range(3)])
    lam = 0.5
    expected_refs = _brute_force_greedy(mean_error, ref_features, 2, lam, "mse")
    chosen = P.select_difficult_fr(Q_W, Q, SIGMA, reference, ref_features, N=2, K=2, lam=lam)
    assert chosen.references.indices.tolist() == expected_refs
    assert chosen.references.objective[0] == pytest.approx(mean_error[expected_refs[0]])
    for y, picked in zip(expected_refs, chosen.distorted):
        members = [x for x in range(8) if reference[x] == y]
        assert picked.tolist() == sorted(members, key=lambda x: -error[x])[:2]


def test_selection_bad_input_messages():
    with pytest.raises(ValueError, match="no distorted images"):
        P.select_difficult_fr(Q_W, Q, SIGMA, np.zeros(8, dtype=int), np.eye(2), N=1, K=1)
    with pytest.raises(ValueError, match=r"samples \[2\]"):
        P.select_difficult_nr(np.r_[Q_W[:2], np.nan, Q_W[3:]], Q, SIGMA, FEATURES, N=2)
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        P.select_difficult_nr(Q_W, Q, SIGMA, np.r_[FEATURES[:1], np.zeros((1, 3)), FEATURES[2:]], N=2)
    with pytest.raises(ValueError, match="cannot select 9"):
        P.select_difficult_nr(Q_W, Q, SIGMA, FEATURES, N=9)
