"""The tiny-iqa trainer: its soft level targets, the prompts it trains (exactly those the jobs send),
its seeded training rows (bundled samples refused), and a short run on Ray Train that learns and resumes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayiqa.config import load_config
from rayiqa.config.tiny_iqa import TinyDataConfig, TinyIQATrainConfig
from skimage import img_as_float

from rayiqa.data.fr_metrics import gmsd, gmsd_cells
from rayiqa.data.photos import PHOTOS, SAMPLE_SOURCES, decode_png, defocus_background, load_photo, make_example
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


def test_defocused_background_keeps_a_sharp_region_and_blurs_a_corner():
    texture = np.random.default_rng(0).integers(0, 256, (112, 140, 3), dtype=np.uint8)
    for seed in range(6):
        out = defocus_background(texture, np.random.default_rng(seed))
        assert out.shape == texture.shape and out.dtype == np.uint8
        cells = np.abs(out.astype(float) - texture).reshape(14, 8, 14, 10, 3).mean(axis=(1, 3, 4))
        assert cells.min() < 3  # the ellipse's centre stays sharp
        assert max(cells[0, 0], cells[0, -1], cells[-1, 0], cells[-1, -1]) > 30  # the corner farthest from it: blurred


def test_every_packaged_photograph_loads_as_rgb_and_none_is_a_sample():
    assert not set(PHOTOS) & set(SAMPLE_SOURCES)
    smallest_crop = TinyDataConfig().side_range[0]
    for name in PHOTOS:
        image = load_photo(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert min(image.shape[:2]) >= smallest_crop and image.std() > 10, name  # not a blank


def test_bundled_samples_are_refused_and_rows_are_seeded():
    for name in SAMPLE_SOURCES:
        with pytest.raises(DatasetError, match="bundled sample"):
            load_photo(name)
    kwargs = dict(sources=["clock", "grass"], types={"jpeg": 3.0, "gaussian_blur": 1.0}, side_range=(60, 120), dead_leaves_share=0.5,
                  defocus_share=0.5, off_grid_share=0.5, versions=2, gmsd_ceiling=0.3, grid=28)
    a, b = make_example(**kwargs, seed=[0, 5]), make_example(**kwargs, seed=[0, 5])
    assert a == b and a != make_example(**kwargs, seed=[0, 6])
    rows = [make_example(**kwargs, seed=[1, i]) for i in range(12)]
    assert {r["source"] for r in rows} >= {"dead_leaves"} and {r["source"] for r in rows} - {"dead_leaves"}
    on_grid = [decode_png(r["images"][0]).shape[0] % 28 == 0 == decode_png(r["images"][0]).shape[1] % 28 for r in rows]
    assert any(on_grid) and not all(on_grid)  # some rows are cut to whole tokens, the others left for the processor
    for r in rows:
        pristine = decode_png(r["images"][0])
        h, w = r["grid_hw"]
        assert r["q"][0] == 1.0 and r["types"][0] == "none"
        assert min(pristine.shape[:2]) >= 56 and [round(n / 28) for n in pristine.shape[:2]] == [h, w]  # the processor's grid
        for data, q, qmap in zip(r["images"][1:], r["q"][1:], r["qmaps"][1:]):
            image, cells = decode_png(data), np.frombuffer(qmap, np.float32).reshape(h, w)
            assert q == pytest.approx(np.clip(1 - gmsd(img_as_float(pristine), img_as_float(image)) / 0.3, 0, 1))
            assert ((cells >= 0) & (cells <= 1)).all()
            if q < 0.8:  # a visible distortion shows in the cells too
                assert cells.mean() < 1.0


def test_type_weights_steer_which_distortions_rows_get_and_bad_weights_are_refused():
    kwargs = dict(sources=["grass"], side_range=(56, 84), dead_leaves_share=0.0, defocus_share=0.0, off_grid_share=0.0, versions=3,
                  gmsd_ceiling=0.3, grid=28)
    only_jpeg = [make_example(types={"jpeg": 1.0, "contrast": 0.0}, **kwargs, seed=[2, i]) for i in range(4)]
    assert {t for r in only_jpeg for t in r["types"][1:]} == {"jpeg"}
    mixed = [make_example(types={"jpeg": 3.0, "contrast": 1.0}, **kwargs, seed=[2, i]) for i in range(30)]
    share = np.mean([t == "jpeg" for r in mixed for t in r["types"][1:]])
    assert 0.6 < share < 0.9  # 90 draws at p = 0.75
    data = TinyIQATrainConfig().data
    assert data.type_mix() == {t: 1.0 for t in data.types}
    for weights in ({"sharpen": 1.0}, {"jpeg": -1.0}, {t: 0.0 for t in data.types}):
        with pytest.raises(ValueError, match="type_weights"):
            TinyDataConfig(type_weights=weights)


def test_gmsd_cells_of_a_uniform_distortion_average_to_about_the_image_gmsd():
    rng = np.random.default_rng(0)
    image = img_as_float(load_photo("grass")[:112, :168])
    noisy = np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1)
    cells = gmsd_cells(image, noisy, 28)
    assert cells.shape == (4, 6) and np.all(cells > 0)
    assert cells.mean() == pytest.approx(gmsd(image, noisy), rel=0.25)
    assert np.all(gmsd_cells(image, image, 28) == 0)


def test_dct_patch_embedding_reads_out_the_luma_dct_of_a_patch():
    import torch
    from scipy.fft import dctn

    from rayiqa.train.tiny_iqa import dct_patch_embedding

    weight = torch.empty(96, 3, 2, 14, 14)
    dct_patch_embedding(weight)
    patch = np.random.default_rng(0).normal(size=(14, 14))
    grey = torch.tensor(np.broadcast_to(patch, (3, 2, 14, 14)).copy(), dtype=torch.float32)  # same in every channel, frame
    out = (weight * grey).sum(dim=(1, 2, 3, 4)).numpy()
    coeffs = dctn(patch, norm="ortho")
    assert out[0] == pytest.approx(0.1 * coeffs[0, 0], rel=1e-4)  # the patch mean, damped
    assert out[89] == pytest.approx((1 + np.hypot(13, 13)) * coeffs[13, 13], rel=1e-4)  # the finest checkerboard, boosted
    assert np.abs(out[90:]).max() < 1e-4  # colour-opponent channels do not see grey


@pytest.mark.parametrize("patch", [14, 16])
def test_initial_model_tokens_line_up_with_the_rows_label_cells(tmp_path, patch):
    """The processor built at `model.patch_size` cuts every row's images into exactly the row's grid of label cells
    (one per merged token), on-grid rows and rows it resizes alike."""
    from rayiqa.config.tiny_iqa import TinyShapeConfig
    from rayiqa.train.tiny_iqa import build_initial_model
    from transformers import AutoConfig, AutoProcessor

    shape = TinyShapeConfig(patch_size=patch, hidden_size=32, layers=1, vision_hidden_size=32, vision_depth=1)
    folder = build_initial_model(shape, 0, tmp_path / "model")
    assert AutoConfig.from_pretrained(folder).vision_config.patch_size == patch and shape.grid == 2 * patch
    processor = AutoProcessor.from_pretrained(folder).image_processor
    rows = [make_example(["grass"], {"jpeg": 1.0}, (60, 140), 0.0, 0.0, 0.5, 1, 0.3, shape.grid, [3, i]) for i in range(8)]
    assert {decode_png(r["images"][0]).shape[0] % shape.grid == 0 for r in rows} == {True, False}  # both kinds of row
    for r in rows:
        thw = processor(images=[decode_png(r["images"][1])], min_pixels=3136, max_pixels=200704)["image_grid_thw"][0]
        assert [int(thw[1]) // 2, int(thw[2]) // 2] == list(r["grid_hw"])


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


@pytest.mark.timeout(420)
def test_trainer_runs_both_phases_on_two_workers_learns_and_resumes(ray_local, tmp_path):
    import torch
    from safetensors.torch import load_file

    from rayiqa.config.tiny_iqa import TinyIQATrainConfig
    from rayiqa.train import tiny_iqa

    base = ["data.rows=48", "data.side_range=[56,112]", "data.types=[jpeg,gaussian_blur,contrast]", "data.versions=2",
            "batch_size=3", "max_steps_per_epoch=8", "max_pixels=12544", "warmup_steps=2", "lr=3e-3", "vision.lr=3e-3",
            "vision.epochs=1", "holdout_eval=false", "cpus_per_worker=0.5", "loader_cpus=0.5",
            f"storage_path={tmp_path / 'runs'}", "export_dir=null"]
    cfg = load_config(TinyIQATrainConfig, None, [*base, "epochs=2"])
    result = tiny_iqa.train_tiny_iqa(cfg)
    assert result.error is None
    m = result.metrics  # the prompt phase's run resumed from the vision phase's checkpoint
    assert (m["epoch"], m["step"], m["phase"], m["resumed_from_step"]) == (3, 24, "prompts", 8)

    rows = {k: np.asarray(v, dtype=object) for k, v in tiny_iqa.make_rows({"id": np.arange(12)}, cfg.model_dump()).items()}
    initial = tmp_path / "runs" / "tiny-iqa" / "initial-model"
    with result.checkpoint.as_directory() as trained:
        assert (Path(trained) / "model.safetensors").is_file()  # each checkpoint is a loadable HF folder
        assert _fixed_loss(Path(trained), cfg, rows) < 0.95 * _fixed_loss(initial, cfg, rows)
        before, after = load_file(initial / "model.safetensors"), load_file(Path(trained) / "model.safetensors")
    patch = "visual.patch_embed.proj.weight"
    assert not torch.equal(before[patch], after[patch])  # the vision phase trained the tower

    resumed = tiny_iqa.train_tiny_iqa(load_config(TinyIQATrainConfig, None, [*base, "epochs=3"]))
    assert resumed.error is None
    assert (resumed.metrics["epoch"], resumed.metrics["step"], resumed.metrics["resumed_from_step"]) == (4, 32, 24)
    with resumed.checkpoint.as_directory() as again:
        final = load_file(Path(again) / "model.safetensors")
    assert torch.equal(final[patch], after[patch])  # prompt epochs leave the patch embedding (and blocks) frozen
    assert not torch.equal(final["model.layers.0.mlp.up_proj.weight"],
                           after["model.layers.0.mlp.up_proj.weight"])
