"""IQA metrics against scipy.stats, hand-computed values and exact logistic data."""
import numpy as np
import pytest
from scipy import stats

from rayiqa.methods.metrics import evaluate, fit_logistic, krcc, logistic_4, logistic_5, plcc, srcc


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=200)
    return x, 0.6 * x + rng.normal(scale=0.8, size=200)


def test_correlations_equal_scipy(data):
    x, y = data
    assert srcc(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert krcc(x, y) == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-12)
    assert plcc(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)


def test_hand_computed_values():
    # ranks of x: 1 2 3 4, ranks of y: 1 3 2 4 -> d^2 = 0+1+1+0 = 2, rho = 1 - 6*2/(4*15) = 0.8
    x, y = [1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]
    assert srcc(x, y) == pytest.approx(0.8)
    # 6 pairs, one discordant (2,3): tau = (5 - 1) / 6
    assert krcc(x, y) == pytest.approx(4 / 6)


def test_monotone_transform_keeps_rank_metrics(data):
    x, y = data
    for g in (np.exp, lambda v: v**3 + 2.0, lambda v: 1 / (1 + np.exp(-3 * v))):
        assert srcc(g(x), y) == pytest.approx(srcc(x, y), abs=1e-12)
        assert krcc(g(x), y) == pytest.approx(krcc(x, y), abs=1e-12)
    # ... while PLCC on raw scores does change under a nonlinear transform
    assert abs(plcc(np.exp(x), y) - plcc(x, y)) > 0.05


@pytest.mark.parametrize("increasing", [True, False])
def test_logistic_fit_recovers_exact_logistic_data(increasing):
    x = np.linspace(0.0, 10.0, 60)
    true = (4.5, 1.2, 5.0, 1.3) if increasing else (1.2, 4.5, 5.0, 1.3)
    y = logistic_4(x, *true)
    assert plcc(x, y) < 0.999 if increasing else plcc(x, y) > -0.999  # raw PLCC is not perfect
    res = evaluate(x, y)
    assert res["plcc_logistic"] == pytest.approx(1.0, abs=1e-6)
    assert res["rmse"] == pytest.approx(0.0, abs=1e-5)
    fitted = fit_logistic(x, y)
    np.testing.assert_allclose(logistic_4(x, *fitted), y, atol=1e-5)


def test_weak_correlation_fit_keeps_the_best_of_several_starts():
    """r = 0.24 on 40 pairs: curve_fit from the standard start alone stops in a local optimum whose
    residual is > 10% above the one a start at another midpoint reaches."""
    import warnings

    from scipy import optimize

    rng = np.random.default_rng(30)
    x = rng.normal(size=40)
    y = 0.1 * x + rng.normal(size=40)
    assert 0.2 < plcc(x, y) < 0.3

    def sse(params) -> float:
        with np.errstate(over="ignore"):
            return float(np.sum((logistic_4(x, *params) - y) ** 2))

    standard = [y.max(), y.min(), x.mean(), x.std() / 4]  # the classic single start (positive rank correlation)
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single, _ = optimize.curve_fit(logistic_4, x, y, p0=standard, method="trf", max_nfev=20000)
    best = fit_logistic(x, y)
    assert sse(best) < 0.9 * sse(single)
    # and the kept fit is a local minimum: no small step in any parameter lowers the residual
    for i in range(4):
        for step in (-1e-4, 1e-4):
            nudged = best.copy()
            nudged[i] += step * max(1.0, abs(best[i]))
            assert sse(nudged) >= sse(best) - 1e-9


def test_logistic_4_known_values():
    # at x = b3 the curve is halfway between the asymptotes; |b4| makes the sign of b4 irrelevant
    assert logistic_4(np.array(2.0), 5.0, 1.0, 2.0, 0.5) == pytest.approx(3.0)
    assert logistic_4(np.array(3.0), 5.0, 1.0, 2.0, -1.0) == pytest.approx(4 / (1 + np.exp(-1)) + 1)


def test_five_parameter_variant_fits_its_own_form():
    x = np.linspace(-3.0, 3.0, 80)
    y = logistic_5(x, 2.0, 1.5, 0.3, 0.2, 3.0)
    res = evaluate(x, y, form=5)
    assert res["logistic"] == "5-parameter"
    assert res["plcc_logistic"] == pytest.approx(1.0, abs=1e-6)
    assert res["rmse"] < 1e-4


def test_nan_pairs_are_dropped_and_counted(data):
    x, y = data
    x2, y2 = x.copy(), y.copy()
    x2[[3, 10]] = np.nan
    y2[[10, 50, 51]] = np.nan  # index 10 has both: 4 distinct pairs dropped
    res = evaluate(x2, y2)
    keep = np.ones(x.size, bool)
    keep[[3, 10, 50, 51]] = False
    assert res["n"] == x.size - 4 and res["n_dropped"] == 4
    assert res["srcc"] == pytest.approx(stats.spearmanr(x[keep], y[keep])[0], abs=1e-12)
    assert res["plcc"] == pytest.approx(stats.pearsonr(x[keep], y[keep])[0], abs=1e-12)
    assert np.isfinite(res["plcc_logistic"]) and res["plcc_logistic"] >= res["plcc"] - 1e-9


def test_too_few_pairs_is_a_clear_error():
    with pytest.raises(ValueError, match=r"at least 3 .* got 2 \(1 dropped for NaN\)"):
        evaluate([1.0, 2.0, np.nan], [1.0, 3.0, 2.0])


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="pred has 3 scores but mos has 2"):
        evaluate([1.0, 2.0, 3.0], [1.0, 2.0])


def test_constant_prediction_reports_fit_error_instead_of_crashing():
    with pytest.warns(stats.ConstantInputWarning):
        res = evaluate([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0])
    assert np.isnan(res["plcc_logistic"]) and np.isnan(res["rmse"])
    assert "more than one distinct value" in res["fit_error"]


def test_eval_files_negates_a_lower_is_better_column_and_reports_each_group(tmp_path):
    """Known answers: within each photo the score falls as the level rises (SRCC +1 after negation), but
    photo b sits higher overall, so the pooled SRCC is below 1."""
    import pandas as pd

    from rayiqa.evaluate import evaluate_files

    pred = pd.DataFrame({"path": [f"s3://bucket/{p}{lv}.png" for p in "ab" for lv in range(3)],
                         "score": [3.0, 2.0, 1.0, 6.0, 5.0, 4.0]})
    pred.to_parquet(tmp_path / "pred.parquet")
    pd.DataFrame({"path": [f"{p}{lv}.png" for p in "ab" for lv in range(3)], "source": list("aaabbb"),
                  "level": [0, 1, 2] * 2}).to_csv(tmp_path / "labels.csv", index=False)
    report = evaluate_files(str(tmp_path / "pred.parquet"), str(tmp_path / "labels.csv"), "level",
                            lower_is_better=True, by="source")
    assert report.metrics["srcc"] == pytest.approx(srcc(report.pred, report.mos))
    assert report.metrics["srcc"] == pytest.approx(srcc(np.array([3, 2, 1, 6, 5, 4.0]), -np.array([0, 1, 2, 0, 1, 2.0])))
    assert 0 < report.metrics["srcc"] < 1
    assert {k: (g["n"], g["srcc"]) for k, g in report.groups.items()} == {"a": (3, pytest.approx(1.0)), "b": (3, pytest.approx(1.0))}
    assert "by source:" in report.render() and "mean over groups" in report.render()
    plain = evaluate_files(str(tmp_path / "pred.parquet"), str(tmp_path / "labels.csv"), "level")
    assert plain.metrics["srcc"] == pytest.approx(-report.metrics["srcc"]) and plain.groups == {}
    with pytest.raises(ValueError, match="no column 'photo'"):
        evaluate_files(str(tmp_path / "pred.parquet"), str(tmp_path / "labels.csv"), "level", by="photo")
