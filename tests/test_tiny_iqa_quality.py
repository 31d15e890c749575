"""The shipped `tiny-iqa` MLLM assesses quality: the scoring job (whole image and mix-grained) and
`rayiqa eval`, LLM-TTA's MLLM rankers, and the prompting study, all on the bundled sample photographs,
which its training never saw (rayiqa.data.photos refuses them)."""
from __future__ import annotations

import pandas as pd
import pyarrow.dataset as pads
import pytest

from rayiqa.cli import main
from rayiqa.config import ScoreConfig, load_config
from rayiqa.io.samples import samples_dir
from rayiqa.methods.metrics import srcc

LABELS = samples_dir() / "labels.csv"
SEGMENTER = ["segmenter.points_per_side=4", "segmenter.pred_iou_thresh=0", "segmenter.stability_score_thresh=0",
             "method.area_threshold=0.05"]  # few, large crops: the mix-grained path at test speed
# Measured with the shipped weights (training seed 0): pooled SRCC 0.728, whole image and mix-grained alike; 31 of
# 32 distorted copies below their pristine photo (8, 8, 8, 7). The same config trained with seeds 1 and 2 (not
# shipped): 0.753 with 32 of 32, and 0.763 with 31 of 32.
POOLED_MIN = 0.7
PRISTINE_ABOVE = 0.85  # share of a photo's 8 distorted copies that score below it
STUDY_SINGLE_MIN = 0.5  # SRCC against the samples' SSIM; measured 0.689 (seed 1: 0.591, seed 2: 0.680)
STUDY_DOUBLE_MIN = 0.2  # Thurstone-aggregated pairs; measured 0.320 (seed 1: 0.641, seed 2: 0.201)
TTA_RANKER_MIN = 0.5  # measured 0.818 (llm-iqa) and 0.775 (prompt2); seed 1: 0.784, 0.787; seed 2: 0.843, 0.803;
                      # the source model: -0.092


def _scored(out) -> pd.DataFrame:
    rows = pads.dataset(str(out), format="parquet").to_table(columns=["path", "score", "error_kind"]).to_pandas()
    assert rows["error_kind"].isna().all()
    rows["path"] = rows["path"].map(lambda p: p.rsplit("/", 1)[-1])
    return rows.merge(pd.read_csv(LABELS), on="path", validate="one_to_one")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("segmentation", [False, True], ids=["whole-image", "mix-grained"])
def test_job_on_the_samples_orders_each_photos_distortion_levels(ray_local, tmp_path, capsys, segmentation):
    from rayiqa.pipeline.score_job import run_score

    out = tmp_path / "out"
    cfg = load_config(ScoreConfig, "configs/score.yaml", ["input.uri=builtin:samples", f"output.uri={out}",
                                                          f"method.segmentation={str(segmentation).lower()}", *SEGMENTER])
    assert cfg.mllms[0].preset == "tiny-iqa"  # the demo's default
    run_score(cfg)
    rows = _scored(out)
    assert len(rows) == 36
    pooled = srcc(rows["score"].to_numpy(), -rows["level"].to_numpy())
    assert pooled >= POOLED_MIN, pooled
    for source, photo in rows.groupby("source"):
        pristine = photo.loc[photo["level"] == 0, "score"].item()
        assert (photo.loc[photo["level"] > 0, "score"] < pristine).mean() >= PRISTINE_ABOVE, (source, photo)

    assert main(["eval", "scores", str(out), str(LABELS), "--mos-column", "level", "--lower-is-better", "--by", "source"]) == 0
    printed = capsys.readouterr().out
    assert f"{pooled:8.4f}" in printed and "by source:" in printed and "astronaut" in printed


def test_random_weights_have_no_opinion_on_the_same_images(ray_local, tmp_path):
    """The `tiny` preset (random weights): the same job gives every sample about the same score (measured: standard
    deviation 0.029 around 4.01)."""
    from rayiqa.pipeline.score_job import run_score

    out = tmp_path / "out"
    run_score(load_config(ScoreConfig, "configs/score.yaml", ["input.uri=builtin:samples", f"output.uri={out}",
                                                              "method.segmentation=false", "mllms=[{preset: tiny}]"]))
    scores = _scored(out)["score"].to_numpy()
    assert scores.std() < 0.05 * scores.mean()


@pytest.mark.timeout(600)
def test_study_single_and_double_stimulus_systems_agree_with_the_samples_labels(ray_local, tmp_path):
    """configs/study.yaml's default MLLM, NR: the single-stimulus standard prompt's expected level, and the
    double-stimulus standard prompt's "which is better" answers over pairs, Thurstone-aggregated."""
    from rayiqa.config.study import StudyConfig
    from rayiqa.pipeline.study import run_study

    cfg = load_config(StudyConfig, "configs/study.yaml", [
        f"output.uri={tmp_path / 'out'}", "design.systems=[single-standard,double-standard]", "design.scenarios=[nr]",
        "stage.num_cpus=0.5"])
    assert cfg.mllms[0].preset == "tiny-iqa"
    summary = run_study(cfg)
    rows = {row["system"]: row for row in summary.rows}
    assert set(rows) == {"single-standard", "double-standard"} and all(r["n_failed"] == 0 for r in rows.values())
    assert rows["single-standard"]["srcc"] >= STUDY_SINGLE_MIN, rows
    assert rows["double-standard"]["srcc"] >= STUDY_DOUBLE_MIN, rows
    assert "rayiqa-trained (synthetic)" in summary.render()


@pytest.mark.timeout(600)
def test_tta_mechanism_with_the_mllm_as_ranker(tmp_path):
    """benchmarks/tta_mechanism.py's MLLM rankers (the job's `ranker: llm-iqa` and `prompt2`) at a small size:
    both rank the shifted test set (noise, JPEG) by its SSIM labels, and their quality clusters hold more of the true
    top-2 / bottom-2 than the source model's own clusters (measured 14 and 16 vs 5 of 24; seed 1: 15 and 15;
    seed 2: 17 and 16)."""
    from test_tta_mechanism import tta_mechanism

    result = tta_mechanism.run(n_refs=8, levels=3, epochs=2, iterations=2, seed=0, work=tmp_path, mllm="tiny-iqa")
    for ranker in ("llm-iqa", "prompt2"):
        assert result["ranker_srcc"][ranker] >= TTA_RANKER_MIN, result["ranker_srcc"]
        assert result["clusters"][ranker].correct > result["clusters"]["base"].correct, result["clusters"]
    assert {"gc:llm-iqa", "gc:prompt2"} <= set(result["quality"])
