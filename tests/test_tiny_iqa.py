"""The tiny-iqa trainer: its soft level targets, the prompts it trains (exactly those the jobs send),
its seeded training rows (bundled samples refused), and a short run on Ray Train that learns and resumes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayiqa.config import load_config
from rayiqa.data.photos import SAMPLE_SOURCES, load_photo, make_example
from rayiqa.data.rows import DatasetError
from rayiqa.methods import level_targets, llm_tta, study_prompts
from rayiqa.methods.llm_iqa import standard_prompt


# ---- targets and prompts -----------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 7, 9])
@pytest.mark.parametrize("q", [0.0, 0.13, 0.5, 0.91, 1.0])
def test_soft_levels_put_the_expectation_at_q_on_the_level_scale(k, q):
    t = level_targets.soft_levels(q, k)
    assert t.sum() == pytest.approx(1.0) and (t >= 0).all() and np.count_nonzero(t) <= 2
    assert t @ np.arange(k) == pytest.approx(q * (k - 1))


def test_double_target_prefers_the_better_image_and_ties_within_the_margin():
    np.testing.assert_allclose(level_targets.double_target(0.9, 0.2, 0.1), [1, 0, 0])
    np.testing.assert_allclose(level_targets.double_target(0.2, 0.9, 0.1), [0, 1, 0])
    np.testing.assert_allclose(level_targets.double_target(0.5, 0.5, 0.1), [0, 0, 1])
    np.testing.assert_allclose(level_targets.double_target(0.55, 0.5, 0.1), [0.5, 0, 0.5])


def test_questions_are_the_prompts_the_jobs_send():
    from rayiqa.methods.llm_tta import prompt2  # what the job's adapter and Serve's TTA model send

    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(200):
        family = level_targets.FAMILIES[int(rng.integers(len(level_targets.FAMILIES)))]
        q = level_targets.draw_question(family, (0.8, 0.3), True, 0.08, rng)
        seen.setdefault(family, []).append(q)
        assert len(q.target) == len(q.prompt.levels) and q.target.sum() == pytest.approx(1.0)
        assert len(q.images) == max(1, q.prompt.n_images())
    assert all(q.prompt == standard_prompt(7) for q in seen["llm_iqa_word7"])
    assert all(q.prompt == prompt2() == llm_tta.prompt2() for q in seen["tta_good_poor"])
    variants = {(len(q.prompt.levels), q.prompt.system) for q in seen["llm_iqa_variants"]}
    assert len(variants) > 5 and all(q.prompt != standard_prompt(7) for q in seen["llm_iqa_variants"])
    single = {q.prompt for q in seen["study_single"]}
    assert single == {study_prompts.answer_prompt("single", "standard", s, 1) for s in ("nr", "fr")}
    for q in seen["study_double"]:  # FR shows the reference (index 2) first; the target follows the order shown
        assert q.prompt == study_prompts.answer_prompt("double", "standard", "fr" if len(q.images) == 3 else "nr", 2)
        assert q.target.argmax() == (0 if q.images[-2] == 0 else 1)


def test_bundled_samples_are_refused_and_rows_are_seeded():
    for name in SAMPLE_SOURCES:
        with pytest.raises(DatasetError, match="bundled sample"):
            load_photo(name)
    kwargs = dict(sources=["clock", "grass"], types=["jpeg", "gaussian_blur"], side_range=(48, 96), p_pristine=0.3,
                  ssim_floor=0.3)
    a, b = make_example(**kwargs, seed=[0, 5]), make_example(**kwargs, seed=[0, 5])
    assert a == b and a != make_example(**kwargs, seed=[0, 6])
    rows = [make_example(**kwargs, seed=[1, i]) for i in range(12)]
    for r in rows:
        for key in ("a", "b"):
            assert 0.0 <= r[f"q_{key}"] <= 1.0 and (r[f"q_{key}"] == 1.0) == (r[f"image_{key}"] == r["pristine"])


def _fixed_loss(folder: Path, cfg, rows: dict) -> float:
    """The soft-label loss of the model in `folder` on the same questions about the same rows."""
    import torch

    from rayiqa.train import tiny_iqa

    engine = tiny_iqa._engine(folder, cfg)
    requests, targets = tiny_iqa._questions(rows, cfg, np.random.default_rng(7))
    inputs, texts = engine.encode(requests)
    ids = [engine.level_ids(t, r.prompt.levels) for t, r in zip(texts, requests)]
    with torch.no_grad():
        return float(tiny_iqa.level_loss(engine.model(**inputs, logits_to_keep=1).logits[:, -1, :], ids, targets))


@pytest.mark.timeout(300)
def test_trainer_learns_in_20_steps_on_two_workers_and_resumes(ray_local, tmp_path):
    from rayiqa.config.tiny_iqa import TinyIQATrainConfig
    from rayiqa.train import tiny_iqa

    base = ["data.rows=80", "data.side_range=[48,96]", "data.types=[jpeg,gaussian_blur,contrast]", "batch_size=4",
            "max_steps_per_epoch=10", "max_pixels=12544", "warmup_steps=2", "lr=3e-3", "holdout_eval=false",
            "cpus_per_worker=0.5", "loader_cpus=0.5", f"storage_path={tmp_path / 'runs'}", "export_dir=null"]
    cfg = load_config(TinyIQATrainConfig, None, [*base, "epochs=2"])
    result = tiny_iqa.train_tiny_iqa(cfg)
    assert result.error is None
    assert (result.metrics["epoch"], result.metrics["step"], result.metrics["resumed_from_step"]) == (2, 20, 0)

    rows = tiny_iqa.make_rows({"id": np.arange(16)}, cfg.model_dump())
    rows = {k: np.asarray(v, dtype=object if k != "q_a" and k != "q_b" else float) for k, v in rows.items()}
    initial = tmp_path / "runs" / "tiny-iqa" / "initial-model"
    with result.checkpoint.as_directory() as trained:
        assert (Path(trained) / "model.safetensors").is_file()  # each checkpoint is a loadable HF folder
        assert _fixed_loss(Path(trained), cfg, rows) < 0.95 * _fixed_loss(initial, cfg, rows)  # measured 1.52 vs 1.66

    resumed = tiny_iqa.train_tiny_iqa(load_config(TinyIQATrainConfig, None, [*base, "epochs=3"]))
    assert resumed.error is None
    assert (resumed.metrics["epoch"], resumed.metrics["step"], resumed.metrics["resumed_from_step"]) == (3, 30, 20)
