"""IQA agreement metrics between predicted scores and MOS: SRCC, KRCC, PLCC and PLCC/RMSE after a
logistic mapping, the evaluation every paper in `papers/` reports.

The nonlinear mapping is VQEG's 4-parameter logistic (VQEG FR-TV Phase II report, 2003):
    f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2
and, as an option, the 5-parameter logistic of Sheikh, Sabir & Bovik (IEEE TIP 2006):
    f(x) = b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5
Both are fitted to (pred, mos) by least squares with scipy.optimize.curve_fit.
"""
from __future__ import annotations

import warnings
from typing import Callable, Literal

import numpy as np
from scipy import optimize, stats

MIN_PAIRS = 3
LogisticForm = Literal[4, 5]


def _pairs(pred: np.ndarray, mos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-D float64 views of two equally long score arrays; a clear error otherwise."""
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"pred has {x.size} scores but mos has {y.size}")
    return x, y


def srcc(pred: np.ndarray, mos: np.ndarray) -> float:
    """Spearman rank-order correlation coefficient."""
    return float(stats.spearmanr(*_pairs(pred, mos)).statistic)


def krcc(pred: np.ndarray, mos: np.ndarray) -> float:
    """Kendall rank-order correlation coefficient (tau-b, scipy's default)."""
    return float(stats.kendalltau(*_pairs(pred, mos)).statistic)


def plcc(pred: np.ndarray, mos: np.ndarray) -> float:
    """Pearson linear correlation coefficient on the raw scores (no mapping)."""
    return float(stats.pearsonr(*_pairs(pred, mos)).statistic)


def logistic_4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic: b1/b2 the upper/lower asymptotes, b3 the midpoint, |b4| the slope scale."""
    return (b1 - b2) / (1.0 + np.exp(-(x - b3) / np.abs(b4))) + b2


def logistic_5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """Sheikh et al. (2006) 5-parameter logistic: a logistic plus a linear term b4*x + b5."""
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(b2 * (x - b3)))) + b4 * x + b5


LOGISTICS: dict[int, Callable[..., np.ndarray]] = {4: logistic_4, 5: logistic_5}


MIDPOINT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # of pred: where the starts put the logistic's midpoint b3
SLOPE_DIVISORS = (4.0, 20.0)  # the starts' slope scale: std(pred) / divisor


def _initial_params(x: np.ndarray, y: np.ndarray, form: LogisticForm) -> list[list[float]]:
    """Starting points: the standard one first (asymptotes at the MOS range, midpoint at mean(x),
    oriented by the sign of the rank correlation), then midpoints at quantiles of x, two slopes and
    both orientations. On weak correlations the least-squares surface has several local optima and
    a single start can stop in a worse one."""
    sign = 1.0 if stats.spearmanr(x, y).statistic >= 0 else -1.0
    std = float(np.std(x))
    centres = [float(np.mean(x))] + [float(np.quantile(x, q)) for q in MIDPOINT_QUANTILES]
    starts = []
    for orient in (sign, -sign):
        for centre in centres:
            for divisor in SLOPE_DIVISORS:
                scale = std / divisor
                if form == 4:
                    hi, lo = (y.max(), y.min()) if orient > 0 else (y.min(), y.max())
                    starts.append([float(hi), float(lo), centre, scale])
                else:
                    starts.append([orient * float(y.max() - y.min()), 1.0 / scale, centre, 0.0, float(np.mean(y))])
    return starts


def fit_logistic(pred: np.ndarray, mos: np.ndarray, form: LogisticForm = 4) -> np.ndarray:
    """Least-squares parameters of the 4- or 5-parameter logistic mapping pred onto mos: the best
    (lowest residual sum of squares) of the fits from every starting point of `_initial_params`.

    Raises RuntimeError when no start converges and ValueError for constant input.
    """
    x, y = _pairs(pred, mos)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("a logistic fit needs pred and mos each with more than one distinct value")
    f = LOGISTICS[form]
    best, best_sse, failure = None, np.inf, None
    # "trf" rather than "lm": lm's finite-difference step is relative to |b|, so a parameter that
    # starts at ~0 (b3 = mean(x) on centred scores) gets a zero Jacobian column and never moves.
    # exp overflow saturates the logistic correctly; an inestimable covariance is irrelevant here.
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        for p0 in _initial_params(x, y, form):
            try:
                params, _ = optimize.curve_fit(f, x, y, p0=p0, method="trf", max_nfev=20000)
            except RuntimeError as e:
                failure = e
                continue
            sse = float(np.sum((f(x, *params) - y) ** 2))
            if sse < best_sse:
                best, best_sse = params, sse
    if best is None:
        raise RuntimeError(f"the logistic fit converged from no starting point: {failure}")
    return best


def evaluate(pred: np.ndarray, mos: np.ndarray, form: LogisticForm = 4) -> dict[str, float | int | str]:
    """All agreement metrics for one prediction set.

    Pairs where either value is NaN are dropped first; `n` and `n_dropped` say how many were used
    and dropped. SRCC/KRCC are unchanged by the (monotone) logistic, so only PLCC and RMSE are
    reported after it. If the fit fails, `plcc_logistic` and `rmse` are NaN and `fit_error` says why.
    Raises ValueError when fewer than 3 valid pairs remain.
    """
    x, y = _pairs(pred, mos)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n_dropped = int((~keep).sum())
    if x.size < MIN_PAIRS:
        raise ValueError(
            f"need at least {MIN_PAIRS} (pred, mos) pairs without NaN, "
            f"got {x.size} ({n_dropped} dropped for NaN)"
        )
    out: dict[str, float | int | str] = {
        "n": int(x.size),
        "n_dropped": n_dropped,
        "srcc": srcc(x, y),
        "krcc": krcc(x, y),
        "plcc": plcc(x, y),
        "plcc_logistic": float("nan"),
        "rmse": float("nan"),
        "logistic": f"{form}-parameter",
    }
    try:
        params = fit_logistic(x, y, form)
    except (RuntimeError, ValueError) as e:
        out["fit_error"] = str(e)
        return out
    with np.errstate(over="ignore"):
        fitted = LOGISTICS[form](x, *params)
    out["plcc_logistic"] = plcc(fitted, y)
    out["rmse"] = float(np.sqrt(np.mean((fitted - y) ** 2)))
    return out
