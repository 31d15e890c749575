"""The mechanism reproduction: Table 1 statistics on hand-made batches, and the whole run at a tiny size."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "tta_mechanism", Path(__file__).resolve().parents[1] / "benchmarks" / "tta_mechanism.py"
)
tta_mechanism = sys.modules.setdefault("tta_mechanism", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(tta_mechanism)  # the benchmark is a script, not a package: load it by path


def test_table1_statistics_on_hand_made_batches():
    truth = np.array([8.0, 7, 6, 5, 4, 3, 2, 1])  # true top-2 = {0, 1}, bottom-2 = {6, 7}, best = 0
    perfect = truth * 10
    # ranker picks high {0, 2} (one right), low {7, 5} (one right), best = 2 (wrong)
    half = np.array([5.0, 1, 9, 2, 3, 0.5, 4, 0])
    # ranker picks high {6, 7}, low {0, 1}: the clusters swapped, all four wrong; best wrong
    reversed_ = -truth
    stats = tta_mechanism.cluster_stats([perfect, half, reversed_], [truth, truth, truth], k=2)
    assert (stats.correct, stats.wrong, stats.top1_hits, stats.batches) == (4 + 2 + 0, 0 + 2 + 4, 1, 3)
    assert stats.top1_percent == pytest.approx(100 / 3)
    # k = 3 on one batch: high {2, 0, 6} vs {0, 1, 2} -> 2 right; low {7, 5, 1} vs {7, 6, 5} -> 2 right
    assert tta_mechanism.cluster_stats([half], [truth], k=3) == tta_mechanism.ClusterStats(4, 2, 0, 1)


def test_cluster_stats_needs_matching_batch_lists():
    with pytest.raises(ValueError):
        tta_mechanism.cluster_stats([np.arange(8.0)], [], k=2)


def test_tiny_run_reports_every_approach_and_an_oracle_ranker_is_perfect(tmp_path):
    result = tta_mechanism.run(n_refs=2, levels=2, epochs=1, iterations=1, seed=0, work=tmp_path)
    assert result["train"]["images"] == 2 * 3 * 2 and result["test"]["batches"] == 2 * 2 * 2 // 8
    n = result["test"]["batches"]
    assert set(result["quality"]) == {"none", "tta-iqa", "gc:base", "gc:psnr", "gc:ssim"}
    assert all(q["n"] == 8 * n for q in result["quality"].values())
    for stats in result["clusters"].values():  # every batch contributes 2k = 4 cluster members
        assert stats.correct + stats.wrong == 4 * n and stats.batches == n
    assert result["clusters"]["ssim"] == tta_mechanism.ClusterStats(4 * n, 0, n, n)  # SSIM is the label
    assert result["ranker_srcc"]["ssim"] == pytest.approx(1.0)
    report = tta_mechanism.format_report(result)
    assert "gc:psnr" in report and f"{4 * n}/0" in report
