"""The MLLM prompting study's math (mllm-iqa-study.txt, Sec. 3): pairwise preference matrices from
comparisons and rankings, pair samplers, ranking aggregation (Thurstone Case V MAP and the paper's
named alternatives) and greedy difficult-sample selection. Plain numpy/scipy, sparse-friendly.

Symbols follow the paper: C (preference matrix), mu (global quality scores), q (human score, MOS),
sigma (its standard deviation), q_w / d_w (expert NR / FR model predictions), lam (lambda),
epsilon, Div (point-to-set diversity).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Literal, Sequence, Union

import numpy as np
from scipy import optimize, sparse
from scipy.sparse import linalg as sparse_linalg
from scipy.special import log_ndtr, ndtr, ndtri

Outcome = Literal["i", "j", "tie"]
Comparison = tuple[int, int, Outcome]
TieRule = Literal["half", "one"]
Method = Literal["thurstone_map", "thurstone_mosteller", "perron_frobenius", "elo"]
DiversityKind = Literal["mse", "cosine"]
PreferenceMatrix = Union[np.ndarray, sparse.sparray, sparse.spmatrix]

# What a tie adds to both C_ij and C_ji: the paper's "split half and half", or the reference code's 1.
TIE_CREDIT: dict[str, float] = {"half": 0.5, "one": 1.0}
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
# Houlsby et al. (2011) constant for the probit entropy approximation, sqrt(pi * ln 2 / 2).
_BALD_C = np.sqrt(np.pi * np.log(2.0) / 2.0)


# ---------------------------------------------------------------- preference matrix C (Eq. 1)


def _parse_comparison(k: int, comparison: Comparison, n_items: int) -> tuple[int, int, str]:
    """(i, j, outcome) of the k-th comparison, or a ValueError naming it."""
    where = f"comparison {k} {comparison!r}"
    if len(comparison) != 3:
        raise ValueError(f"{where}: expected (i, j, outcome)")
    i, j, outcome = comparison
    for value in (i, j):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{where}: item index {value!r} is not an integer")
        if not 0 <= value < n_items:
            raise ValueError(f"{where}: item index {value} is outside [0, {n_items})")
    if i == j:
        raise ValueError(f"{where}: an item cannot be compared with itself")
    if outcome not in ("i", "j", "tie"):
        raise ValueError(f"{where}: outcome must be 'i', 'j' or 'tie', got {outcome!r}")
    return int(i), int(j), outcome


def preference_matrix(
    comparisons: Sequence[Comparison], n_items: int, tie: TieRule = "half"
) -> sparse.csr_array:
    """Pairwise preference matrix C of Eq. (1) from comparisons (i, j, outcome), outcome "i", "j" or "tie".

    C_ij counts the times x_i was preferred over x_j. A tie is split half and half as the paper says
    (tie="half", default: +0.5 to C_ij and C_ji); tie="one" is the reference code's variant (+1 to
    both). Returned sparse (CSR), M x M with a zero diagonal.
    """
    if tie not in TIE_CREDIT:
        raise ValueError(f"tie must be one of {sorted(TIE_CREDIT)}, got {tie!r}")
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for k, comparison in enumerate(comparisons):
        i, j, outcome = _parse_comparison(k, comparison, n_items)
        if outcome == "tie":
            rows += [i, j]
            cols += [j, i]
            vals += [TIE_CREDIT[tie]] * 2
        else:
            winner, loser = (i, j) if outcome == "i" else (j, i)
            rows.append(winner)
            cols.append(loser)
            vals.append(1.0)
    coo = sparse.coo_array((vals, (rows, cols)), shape=(n_items, n_items), dtype=np.float64)
    return coo.tocsr()  # duplicates are summed


def ranking_to_comparisons(ranking: Sequence[int]) -> list[Comparison]:
    """The L(L-1)/2 pairwise outcomes of one listwise ranking (best first), as used for C in Sec. 3.1."""
    if len(set(ranking)) != len(ranking):
        raise ValueError(f"ranking {list(ranking)!r} repeats an item")
    return [(better, worse, "i") for better, worse in combinations(ranking, 2)]


def preference_matrix_from_rankings(rankings: Sequence[Sequence[int]], n_items: int) -> sparse.csr_array:
    """C of Eq. (1) from listwise rankings (each ordered best first) of the multiple-stimulus method."""
    return preference_matrix([c for r in rankings for c in ranking_to_comparisons(r)], n_items)


@dataclass(frozen=True)
class PairCounts:
    """The nonzero entries of C as parallel arrays: C[i[k], j[k]] = c[k]; the sparse view every solver uses."""

    n_items: int
    i: np.ndarray
    j: np.ndarray
    c: np.ndarray

    @classmethod
    def from_matrix(cls, C: PreferenceMatrix) -> "PairCounts":
        """Validate C (square, finite, nonnegative, zero diagonal as Eq. 1 says) and keep its nonzeros."""
        coo = sparse.coo_array(C, dtype=np.float64)
        if coo.ndim != 2 or coo.shape[0] != coo.shape[1]:
            raise ValueError(f"C must be a square matrix, got shape {coo.shape}")
        coo.sum_duplicates()
        i, j, c = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
        if not np.all(np.isfinite(c)) or np.any(c < 0):
            raise ValueError("C must hold finite, nonnegative counts")
        if np.any(c[i == j] != 0):
            raise ValueError("C must have a zero diagonal (Eq. 1)")
        keep = (c > 0) & (i != j)
        return cls(int(coo.shape[0]), i[keep], j[keep], c[keep])


# ---------------------------------------------------------------- pair sampling


def sample_uniform_pairs(n_items: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """n_pairs ordered pairs (i, j), i != j, drawn uniformly at random with replacement; shape (n_pairs, 2)."""
    if n_items < 2:
        raise ValueError(f"need at least 2 items to form pairs, got {n_items}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n_items, size=n_pairs)
    j = (i + rng.integers(1, n_items, size=n_pairs)) % n_items  # uniform over the other items
    return np.stack([i, j], axis=1)


def sample_groups(
    n_items: int, group_size: int, groups_per_item: int, seed: int = 0, shuffle: bool = True
) -> np.ndarray:
    """The reference code's NR designs: for every item, groups_per_item groups of it plus group_size-1
    distinct random others. Double stimulus: group_size=2, groups_per_item=5 (5 random partners per
    image); multiple stimulus: group_size=4, groups_per_item=2. shuffle randomises each group's
    presentation order (the code keeps the anchor first). Shape (n_items * groups_per_item, group_size).
    """
    if not 2 <= group_size <= n_items:
        raise ValueError(f"group_size must be in [2, n_items={n_items}], got {group_size}")
    rng = np.random.default_rng(seed)
    groups = np.empty((n_items * groups_per_item, group_size), dtype=np.int64)
    for row, anchor in enumerate(np.repeat(np.arange(n_items), groups_per_item)):
        others = rng.choice(n_items - 1, size=group_size - 1, replace=False)
        groups[row, 0] = anchor
        groups[row, 1:] = others + (others >= anchor)  # skip the anchor itself
        if shuffle:
            rng.shuffle(groups[row])
    return groups


def expected_information_gain(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Mutual information (bits) between one comparison's outcome y ~ Bernoulli(Phi(d)) and the score
    difference d ~ N(mean, var): H[Phi(mean / sqrt(1 + var))] - E_d H[Phi(d)], with the expectation in
    the closed-form approximation of Houlsby et al. 2011 ("Bayesian Active Learning for
    Classification and Preference Learning", BALD, probit likelihood; within ~2e-3 bits).
    """
    mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
    p = ndtr(mean / np.sqrt(1.0 + var))
    with np.errstate(divide="ignore", invalid="ignore"):
        marginal = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0))
    s2 = var + _BALD_C**2
    expected = _BALD_C / np.sqrt(s2) * np.exp(-(mean**2) / (2.0 * s2))
    return marginal - expected


def posterior_variance(C: PreferenceMatrix, mu: np.ndarray) -> np.ndarray:
    """Diagonal Laplace approximation of var(mu_i) under Eq. (2): 1 / the diagonal of the Hessian of
    the negated objective at mu, i.e. 1 / (1 + sum over i's comparisons of C r(d) (d + r(d)))."""
    counts = PairCounts.from_matrix(C)
    mu = np.asarray(mu, dtype=np.float64)
    if mu.shape != (counts.n_items,):
        raise ValueError(f"mu must have shape ({counts.n_items},), got {mu.shape}")
    w = counts.c * _mills_curvature(mu[counts.i] - mu[counts.j])
    M = counts.n_items
    return 1.0 / (1.0 + np.bincount(counts.i, w, minlength=M) + np.bincount(counts.j, w, minlength=M))


def sample_active_pairs(
    C: PreferenceMatrix,
    n_pairs: int,
    mu: np.ndarray | None = None,
    max_candidates: int = 2_000_000,
    seed: int = 0,
) -> np.ndarray:
    """The n_pairs unordered pairs whose next comparison is most informative about mu.

    Criterion: expected information gain, as in the active sampling the paper cites [62] (Ye &
    Doermann, CVPR 2014). The posterior of mu is the diagonal Laplace approximation at the Eq. (2)
    MAP (`posterior_variance`), so var(mu_i - mu_j) ~= var_i + var_j; the gain is
    `expected_information_gain`. It favours pairs with close scores (uncertain outcome) and few
    comparisons (uncertain scores). Candidates: all pairs, or max_candidates uniform random pairs
    when there are more. The batch is scored once (one item may recur in it); for sequential active
    sampling, add the answers to C and call again. Shape (n_pairs, 2), best first.
    """
    M = PairCounts.from_matrix(C).n_items
    mu = thurstone_case_v_map(C) if mu is None else np.asarray(mu, dtype=np.float64)
    variance = posterior_variance(C, mu)
    if M * (M - 1) // 2 <= max_candidates:
        a, b = np.triu_indices(M, k=1)
    else:
        a, b = sample_uniform_pairs(M, max_candidates, seed).T
    gain = expected_information_gain(mu[a] - mu[b], variance[a] + variance[b])
    top = np.argsort(-gain, kind="stable")[:n_pairs]
    return np.stack([a[top], b[top]], axis=1)


# ---------------------------------------------------------------- Thurstone Case V MAP (Eq. 2)


def _inverse_mills(d: np.ndarray) -> np.ndarray:
    """phi(d) / Phi(d), computed in log space (log_ndtr) so it stays finite for very negative d."""
    return np.exp(-0.5 * d * d - _LOG_SQRT_2PI - log_ndtr(d))


def _mills_curvature(d: np.ndarray) -> np.ndarray:
    """-(d^2/dd^2) log Phi(d) = r (d + r) with r = phi/Phi; in (0, 1)."""
    r = _inverse_mills(d)
    return r * (d + r)


def _neg_log_posterior(mu: np.ndarray, counts: PairCounts) -> tuple[float, np.ndarray]:
    """Value and gradient of -(sum_ij C_ij log Phi(mu_i - mu_j) - sum_i mu_i^2 / 2), over C's nonzeros."""
    d = mu[counts.i] - mu[counts.j]
    value = -np.dot(counts.c, log_ndtr(d)) + 0.5 * np.dot(mu, mu)
    g = counts.c * _inverse_mills(d)  # d/dd of C_ij log Phi(d)
    grad = mu - np.bincount(counts.i, g, minlength=counts.n_items) + np.bincount(counts.j, g, minlength=counts.n_items)
    return float(value), grad


def thurstone_case_v_objective(mu: np.ndarray, C: PreferenceMatrix) -> tuple[float, np.ndarray]:
    """The negated objective of Eq. (2) at mu and its analytic gradient (what the MAP solver minimises)."""
    return _neg_log_posterior(np.asarray(mu, dtype=np.float64), PairCounts.from_matrix(C))


def thurstone_case_v_map(C: PreferenceMatrix, rtol: float = 1e-6, max_iter: int = 10_000) -> np.ndarray:
    """MAP scores mu under Thurstone's Case V, Eq. (2): argmax sum_ij C_ij log Phi(mu_i - mu_j) - sum mu_i^2/2
    subject to sum mu_i = 0.

    Solved unconstrained with L-BFGS-B and the analytic gradient: the likelihood is invariant to
    shifting all mu, so its gradient sums to zero and stationarity gives sum mu_i = 0 -- the
    constraint is inactive at the optimum. The final mean subtraction only removes solver round-off
    (it cannot lower the objective). The reference code's SLSQP with a numeric gradient and a 1e-6
    floor on Phi gives the same optimum but is O(M^2) per step; this is O(nnz(C)). The solver runs
    until f stops decreasing in floating point; the answer is accepted when max |gradient| <= rtol x
    (1 + the largest number of comparisons of one item), the scale the gradient's terms have.
    """
    counts = PairCounts.from_matrix(C)
    result = optimize.minimize(
        _neg_log_posterior,
        np.zeros(counts.n_items),
        args=(counts,),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-12, "ftol": 0.0},
    )
    per_item = np.bincount(counts.i, counts.c, counts.n_items) + np.bincount(counts.j, counts.c, counts.n_items)
    grad_norm = float(np.max(np.abs(result.jac), initial=0.0))
    if grad_norm > rtol * (1.0 + np.max(per_item, initial=0.0)):
        raise RuntimeError(f"Thurstone MAP did not converge: {result.message} (max |gradient| {grad_norm:.3g})")
    return result.x - result.x.mean()


# ---------------------------------------------------------------- alternatives named in Sec. 3.1


def thurstone_mosteller(C: PreferenceMatrix) -> np.ndarray:
    """Thurstone-Mosteller least squares: minimise sum over compared pairs (mu_i - mu_j - z_ij)^2, with
    z_ij = Phi^-1(p_ij) and p_ij = (C_ij + 1/2) / (n_ij + 1), n_ij = C_ij + C_ji (the add-1/2 correction,
    Anscombe 1956, which keeps unanimous 0/1 proportions finite). Solved with sparse lsqr; its
    minimum-norm solution is orthogonal to the all-ones null space, so sum mu = 0.
    """
    counts = PairCounts.from_matrix(C)
    M = counts.n_items
    Cs = sparse.csr_array((counts.c, (counts.i, counts.j)), shape=(M, M))
    n = Cs + Cs.T
    pairs = sparse.triu(n, k=1, format="coo")
    a, b = pairs.row, pairs.col
    wins = Cs[a, b]
    z = ndtri((np.asarray(wins).ravel() + 0.5) / (pairs.data + 1.0))
    rows = np.arange(a.size)
    design = sparse.csr_array(
        (np.r_[np.ones(a.size), -np.ones(a.size)], (np.r_[rows, rows], np.r_[a, b])), shape=(a.size, M)
    )
    mu = sparse_linalg.lsqr(design, z, atol=1e-12, btol=1e-12)[0]
    return mu - mu.mean()


def perron_frobenius(C: PreferenceMatrix, teleport: float = 1e-6) -> np.ndarray:
    """Perron-Frobenius ranking (Keener, SIAM Review 1993): the principal eigenvector of the positive
    matrix A_ij = (C_ij + 1) / (n_ij + 2) / n_i over compared pairs (Laplace-smoothed win share, row
    normalised by item i's number of opponents n_i), plus teleport / M everywhere so that A is
    strictly positive (irreducible) even on sparse designs. Computed with ARPACK (scipy eigs) on a
    LinearOperator, so A is never dense. Scores are the eigenvector scaled to sum 1.
    """
    counts = PairCounts.from_matrix(C)
    M = counts.n_items
    Cs = sparse.csr_array((counts.c, (counts.i, counts.j)), shape=(M, M))
    n = (Cs + Cs.T).tocoo()
    a, b = n.row, n.col
    share = (np.asarray(Cs[a, b]).ravel() + 1.0) / (n.data + 2.0)
    opponents = np.bincount(a, minlength=M).astype(np.float64)
    A = sparse.csr_array((share / opponents[a], (a, b)), shape=(M, M))
    if M < 3:  # ARPACK needs k < M - 1; a 2x2 problem is solved densely
        values, vectors = np.linalg.eig(A.toarray() + teleport / M)
        r = np.real(vectors[:, np.argmax(np.real(values))])
    else:
        operator = sparse_linalg.LinearOperator(
            (M, M), matvec=lambda x: A @ x + teleport * np.mean(x), dtype=np.float64
        )
        r = np.real(sparse_linalg.eigs(operator, k=1, which="LM", v0=np.ones(M))[1][:, 0])
    return r / r.sum()


def elo(
    comparisons: Sequence[Comparison],
    n_items: int,
    k_factor: float = 32.0,
    initial: float = 1500.0,
    scale: float = 400.0,
) -> np.ndarray:
    """Elo ratings (Elo 1978, the paper's [15]) updated sequentially over the comparisons in the given
    order: E_i = 1 / (1 + 10^((R_j - R_i) / scale)), R_i += K (S_i - E_i), R_j -= K (S_i - E_i), with
    S_i = 1, 0 or 1/2 for outcome "i", "j" or "tie".
    """
    score_of = {"i": 1.0, "j": 0.0, "tie": 0.5}
    ratings = np.full(n_items, float(initial))
    for k, comparison in enumerate(comparisons):
        i, j, outcome = _parse_comparison(k, comparison, n_items)
        expected = 1.0 / (1.0 + 10.0 ** ((ratings[j] - ratings[i]) / scale))
        delta = k_factor * (score_of[outcome] - expected)
        ratings[i] += delta
        ratings[j] -= delta
    return ratings


def rescale_0_100(scores: np.ndarray) -> np.ndarray:
    """Min-max rescaling to [0, 100], as the reference code reports scores; constant scores map to 50."""
    scores = np.asarray(scores, dtype=np.float64)
    span = scores.max() - scores.min()
    return np.full_like(scores, 50.0) if span == 0 else 100.0 * (scores - scores.min()) / span


_MATRIX_METHODS: dict[str, Callable[[PreferenceMatrix], np.ndarray]] = {
    "thurstone_map": thurstone_case_v_map,
    "thurstone_mosteller": thurstone_mosteller,
    "perron_frobenius": perron_frobenius,
}


def rank_aggregate(
    C: PreferenceMatrix | Sequence[Comparison],
    method: Method = "thurstone_map",
    n_items: int | None = None,
    tie: TieRule = "half",
    k_factor: float = 32.0,
    rescale: bool = False,
) -> np.ndarray:
    """Global quality scores from pairwise preferences, higher = better (Sec. 3.1).

    C is a preference matrix (dense or scipy.sparse) or a sequence of comparisons (i, j, outcome),
    turned into C with `preference_matrix(comparisons, n_items, tie)`. "elo" is sequential and needs
    the comparisons in order, not a matrix. rescale=True maps the scores to [0, 100].
    """
    is_matrix = isinstance(C, np.ndarray) or sparse.issparse(C)
    if method == "elo":
        if is_matrix:
            raise ValueError("method 'elo' needs the comparisons in order, not a preference matrix")
        size = n_items if n_items is not None else _infer_n_items(C)
        scores = elo(C, size, k_factor=k_factor)
    elif method in _MATRIX_METHODS:
        if not is_matrix:
            size = n_items if n_items is not None else _infer_n_items(C)
            C = preference_matrix(C, size, tie)
        scores = _MATRIX_METHODS[method](C)
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {['elo', *_MATRIX_METHODS]}")
    return rescale_0_100(scores) if rescale else scores


def _infer_n_items(comparisons: Sequence[Comparison]) -> int:
    """1 + the largest item index in the comparisons (when n_items is not given)."""
    if len(comparisons) == 0:
        raise ValueError("no comparisons given and n_items not set")
    return 1 + max(max(int(c[0]), int(c[1])) for c in comparisons)


# ---------------------------------------------------------------- difficult sample selection (Eqs. 3-5)


def variance_normalized_error(
    prediction: np.ndarray, q: np.ndarray, sigma: np.ndarray, epsilon: float = 1.0
) -> np.ndarray:
    """(q_w(x) - q(x))^2 / (sigma(x)^2 + epsilon), the per-image term of Eqs. (3)-(5) (d_w(x, y) for FR).

    Inputs on the scale the caller chose; the reference code min-max scales MOS and sigma first,
    which is what makes epsilon = 1 a mild regulariser.
    """
    x, y, s = (np.asarray(v, dtype=np.float64).ravel() for v in (prediction, q, sigma))
    if not x.shape == y.shape == s.shape:
        raise ValueError(f"prediction, q and sigma differ in length: {x.size}, {y.size}, {s.size}")
    bad = np.flatnonzero(~np.isfinite(x) | ~np.isfinite(y) | ~np.isfinite(s) | (s < 0))
    if bad.size:
        raise ValueError(f"non-finite prediction/q/sigma or negative sigma at samples {bad[:10].tolist()}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    return (x - y) ** 2 / (s**2 + epsilon)


def normalize_features(features: np.ndarray) -> np.ndarray:
    """Each feature vector scaled to unit L2 norm (the paper's CLIP image features, normalised per image)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D array (samples x dims), got shape {f.shape}")
    norms = np.linalg.norm(f, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"features of samples {bad[:10].tolist()} are zero or non-finite")
    return f / norms[:, None]


def diversity(f: np.ndarray, selected: np.ndarray, kind: DiversityKind = "mse") -> np.ndarray:
    """Div(x, X*) of Eqs. (3) and (5) for every row f[k] against the selected set's unit features.

    kind="mse" (paper, default): mean over dimensions of (f_x - centroid(X*))^2. This differs from the
    mean of MSE(f_x, f_s) over s in X* only by a term that does not depend on x, so the greedy picks
    are the same. kind="cosine" (reference code): 1 - cos(f_x, centroid(X*)). Div(x, {}) = 0.
    """
    if selected.shape[0] == 0:
        return np.zeros(f.shape[0])
    centroid = selected.mean(axis=0)
    if kind == "mse":
        return np.mean((f - centroid) ** 2, axis=1)
    if kind == "cosine":
        return 1.0 - f @ centroid / np.linalg.norm(centroid)
    raise ValueError(f"diversity kind must be 'mse' or 'cosine', got {kind!r}")


@dataclass(frozen=True)
class GreedySelection:
    """Selected sample indices in pick order and the objective value each had when picked."""

    indices: np.ndarray
    objective: np.ndarray


def greedy_select(
    error: np.ndarray, features: np.ndarray, n: int, lam: float = 0.01, kind: DiversityKind = "mse"
) -> GreedySelection:
    """argmax over the not yet selected of error + lam * Div(., selected), n times (Eqs. 3 and 5).

    error is the per-candidate variance-normalised error; features are normalised per row here.
    Ties go to the lowest index.
    """
    error = np.asarray(error, dtype=np.float64)
    f = normalize_features(features)
    if f.shape[0] != error.size:
        raise ValueError(f"{error.size} errors but {f.shape[0]} feature vectors")
    if not 0 <= n <= error.size:
        raise ValueError(f"cannot select {n} of {error.size} samples")
    available = np.ones(error.size, dtype=bool)
    picked, values = [], []
    for _ in range(n):
        objective = error + lam * diversity(f, f[picked], kind)
        objective[~available] = -np.inf
        best = int(np.argmax(objective))
        picked.append(best)
        values.append(objective[best])
        available[best] = False
    return GreedySelection(np.asarray(picked, dtype=np.int64), np.asarray(values))


def select_difficult_nr(
    q_w: np.ndarray,
    q: np.ndarray,
    sigma: np.ndarray,
    features: np.ndarray,
    N: int,
    lam: float = 0.01,
    epsilon: float = 1.0,
    kind: DiversityKind = "mse",
) -> GreedySelection:
    """Eq. (5): the top-N difficult images x_n* = argmax (q_w(x) - q(x))^2 / (sigma(x)^2 + epsilon)
    + lam * Div(x, X*_{n-1}), greedily. q_w: expert NR model predictions; features: e.g. CLIP image
    features of each image (rows).
    """
    return greedy_select(variance_normalized_error(q_w, q, sigma, epsilon), features, N, lam, kind)


@dataclass(frozen=True)
class FRSelection:
    """Eq. (3)'s selected reference images and, per selected reference, Eq. (4)'s top-K distorted images."""

    references: GreedySelection
    distorted: list[np.ndarray]


def select_difficult_fr(
    d_w: np.ndarray,
    q: np.ndarray,
    sigma: np.ndarray,
    reference: np.ndarray,
    reference_features: np.ndarray,
    N: int,
    K: int,
    lam: float = 0.01,
    epsilon: float = 1.0,
    kind: DiversityKind = "mse",
) -> FRSelection:
    """Eqs. (3) and (4). Per distorted image x: d_w(x, y) the expert FR prediction, q(x), sigma(x) and
    reference[x] = the index of its reference y (a row of reference_features). Eq. (3) greedily picks N
    references by (1/|X_y|) sum_{x in X_y} error(x) + lam * Div(y, Y*_{n-1}); Eq. (4) then takes the
    K distorted images of each with the largest error (no diversity term there).
    """
    error = variance_normalized_error(d_w, q, sigma, epsilon)
    reference = np.asarray(reference)
    n_refs = np.asarray(reference_features).shape[0]
    if reference.shape != error.shape or not np.issubdtype(reference.dtype, np.integer):
        raise ValueError(f"reference must hold one integer reference index per distorted image ({error.size})")
    if reference.size and (reference.min() < 0 or reference.max() >= n_refs):
        raise ValueError(f"reference indices must lie in [0, {n_refs})")
    size = np.bincount(reference, minlength=n_refs)
    empty = np.flatnonzero(size == 0)
    if empty.size:
        raise ValueError(f"references {empty[:10].tolist()} have no distorted images (X_y is empty)")
    mean_error = np.bincount(reference, error, minlength=n_refs) / size
    chosen = greedy_select(mean_error, reference_features, N, lam, kind)
    distorted = []
    for y in chosen.indices:
        members = np.flatnonzero(reference == y)
        if K > members.size:
            raise ValueError(f"reference {y} has {members.size} distorted images, fewer than K={K}")
        distorted.append(members[np.argsort(-error[members], kind="stable")[:K]])
    return FRSelection(chosen, distorted)
