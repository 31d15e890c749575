"""PromptIQA Table 5 in miniature: a trained model's ranking of unseen images reverses when its ISPP is inverted.

Trains the benchmark's staged miniature (benchmarks/promptiqa_requirements.py, seed 0) on one torch
thread: ~40 s of process time. Measured over seeds 0-9, SRCC (under the ISPP / under the inverted
ISPP / between the two predictions): seed 0 about +0.6 / -0.55 / -0.98 for ssim, gmsd and the
held-out psnr. The thresholds below hold for all ten seeds (so a different CPU's rounding, which may
take training down another path, does not flip the test): for the training requirements the worst
seed gave +0.06 / -0.01 / -0.89; for psnr the worst "between" was -0.65. A model that ignores its
prompt gives "between" = +1.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "promptiqa_requirements", Path(__file__).resolve().parents[1] / "benchmarks" / "promptiqa_requirements.py"
)
bench = sys.modules.setdefault("promptiqa_requirements", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench)  # the benchmark is a script, not a package: load it by path

LABELS = bench.MINIATURE_TRAIN + ("psnr",)


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    """(images, requirement sets, PromptIQA trained by the staged schedule)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = bench.MINIATURE
        images, sets = bench.build_set(tmp_path_factory.mktemp("miniature"), m["size"], m["levels"], LABELS, 0,
                                       m["types"], m["normalise"])
        return images, sets, bench.train_miniature(images, sets, bench.MINIATURE_CFG, seed=0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("label", ["ssim", "gmsd"])  # train MOS-like, train DMOS-like
def test_trained_ranking_follows_the_ispp_and_reverses_when_it_is_inverted(miniature, label):
    images, sets, model = miniature
    under_ispp, under_inverted, between = bench.reversal(model, images, sets, label)
    assert under_ispp > 0 > under_inverted
    assert between < -0.8


def test_ranking_reverses_on_a_held_out_requirement(miniature):
    images, sets, model = miniature
    assert bench.reversal(model, images, sets, "psnr")[2] < -0.5


def test_an_untrained_model_does_not_pass_the_reversal_check(miniature):
    images, sets, _ = miniature
    torch.manual_seed(0)
    untrained = bench.PromptIQA(bench.MINIATURE_CFG).eval()
    _, _, between = bench.reversal(untrained, images, sets, "ssim")
    assert between > 0.5  # it barely reads the prompt's scores: the same ranking either way


def test_rank_labels_spread_evenly_and_invert_exactly(miniature):
    _, sets, _ = miniature
    train_idx, train_s, test_idx, test_s = sets["ssim"]
    _, inv_train_s, _, inv_test_s = sets["ssim_inv"]
    assert len(set(train_idx) & set(test_idx)) == 0
    assert train_s.min() == 0.0 and train_s.max() == 1.0
    assert abs(float(train_s.mean()) - 0.5) < 1e-6  # ranks on [0, 1]: mean exactly 1/2, ties or not
    assert torch.allclose(torch.from_numpy(inv_test_s), torch.from_numpy(1 - test_s), atol=1e-6)
    assert torch.allclose(torch.from_numpy(inv_train_s), torch.from_numpy(1 - train_s), atol=1e-6)
