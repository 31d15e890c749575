"""The scorer registry: `rayiqa.create_scorer` for every registered scorer on the tiny presets, config
errors that name the scorer or key, a toy scorer registered from one module, and the same scores from
a scorer object and from the scoring job on a real local Ray."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from PIL import Image

import rayiqa
from rayiqa.config import ConfigError, ScoreConfig, load_config
from rayiqa.config.grmp import GRMPModelConfig
from rayiqa.config.promptiqa import PromptIQAModelConfig
from rayiqa.io.samples import samples_dir
from rayiqa.models.grmp_checkpoint import build_model, save_model
from rayiqa.models.promptiqa import PromptIQA
from rayiqa.pipeline.score_job import run_score

SMALL = PromptIQAModelConfig(image_size=32, dim=16, num_heads=2, prompt_depth=1, ispp_depth=1, fusion_depth=1)
BUILTIN = ["grmp", "llm-iqa", "llm-tta", "promptiqa"]
EVIDENCE = {
    "llm-iqa": {"global_probs", "crop_boxes", "crop_areas", "crop_weights", "crop_scores", "model_scores", "weights"},
    "promptiqa": {"ispp_size"},
    "grmp": {"logit_high", "logit_low", "weights"},
    "llm-tta": {"base_score", "adapted_score", "cluster", "p_good", "final_loss", "weights"},
}


def _samples(n: int, offset: int = 0) -> list[Path]:
    return sorted(p for p in samples_dir().iterdir() if p.suffix == ".jpg")[offset : offset + n]


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each built-in scorer's config keys on tiny models (trained scorers from checkpoints written here)."""
    root = tmp_path_factory.mktemp("scorers")
    torch.manual_seed(0)
    promptiqa_ckpt = root / "promptiqa.pt"
    torch.save(PromptIQA(SMALL).eval().state_dict(), promptiqa_ckpt)
    grmp_ckpt = root / "grmp"
    grmp_ckpt.mkdir()
    grmp_cfg = GRMPModelConfig(clip="tiny", seed=3)
    with pytest.warns(UserWarning, match="random weights"):
        save_model(build_model(grmp_cfg), grmp_cfg, grmp_ckpt)
    ispp = [{"path": str(p), "score": s} for p, s in zip(_samples(3, offset=10), [0.9, 0.5, 0.1])]
    return {
        "llm-iqa": {"mllms": [{"preset": "tiny", "max_pixels": 12544}], "method": {"area_threshold": 0.01}},
        "promptiqa": {"model": {**SMALL.model_dump(exclude={"checkpoint"}), "checkpoint": str(promptiqa_ckpt)}, "ispp": ispp},
        "grmp": {"checkpoint": str(grmp_ckpt)},
        "llm-tta": {"image_size": 64, "iterations": 2, "device": "cpu"},
    }


def test_list_scorers_names_the_builtin_ones() -> None:
    assert set(BUILTIN) <= set(rayiqa.list_scorers())
    assert rayiqa.list_scorers() == sorted(rayiqa.list_scorers())


def test_import_rayiqa_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, rayiqa; print(rayiqa.list_scorers()); assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "llm-iqa" in out.stdout


@pytest.mark.parametrize("name", BUILTIN)
def test_every_scorer_scores_arrays_pil_images_and_paths(name: str, configs: dict) -> None:
    paths = _samples(2)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    scorer = rayiqa.create_scorer(name, **configs[name])
    results = scorer.score([arrays[0], Image.open(paths[1]), str(paths[0])])
    assert len(results) == 3
    for r in results:
        assert isinstance(r, rayiqa.ScoreResult) and np.isfinite(r.score)
        assert EVIDENCE[name] <= set(r.evidence)
    assert results[2].score == pytest.approx(results[0].score, abs=1e-6)  # a path and its decoded array agree


def test_unknown_scorer_and_bad_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown scorer 'clip'.*grmp, llm-iqa, llm-tta, promptiqa"):
        rayiqa.create_scorer("clip")
    with pytest.raises(ConfigError, match=r"scorer 'grmp': .*chekpoint: unknown key"):
        rayiqa.create_scorer("grmp", chekpoint="x")
    with pytest.raises(ConfigError, match=r"method\.levels"):
        rayiqa.create_scorer("llm-iqa", method={"levels": 4})
    with pytest.raises(ConfigError, match=r"grmp\.chekpoint: unknown key"):
        load_config(ScoreConfig, None, ["scorer=grmp", "grmp.checkpoint=x", "grmp.chekpoint=x"])


def test_a_toy_scorer_from_one_module_is_listed_and_configured() -> None:
    import toy_scorer  # registers "toy" (tests/toy_scorer.py is the whole scorer)

    assert "toy" in rayiqa.list_scorers()
    cfg = load_config(ScoreConfig, None, ["scorer=toy", "toy.offset=0.5"])
    assert cfg.scorer_config == toy_scorer.ToyConfig(offset=0.5) and cfg.scorer_config.model_id == "toy"
    [r] = rayiqa.create_scorer("toy", offset=0.5).score([np.full((4, 4, 3), 255, np.uint8)])
    assert r.score == pytest.approx(1.5) and r.evidence == {"mean": 1.0}
    with pytest.raises(ConfigError, match=r"toy\.ofset: unknown key"):
        load_config(ScoreConfig, None, ["scorer=toy", "toy.ofset=1"])


@pytest.mark.parametrize("name", ["llm-iqa", "grmp"])
def test_scorer_and_score_job_agree(name: str, configs: dict, ray_local, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in _samples(3):
        (src / p.name).write_bytes(p.read_bytes())
    sections = configs[name] if name != "llm-iqa" else {}
    overrides = [f"scorer={name}", f"input.uri={src}", f"output.uri={tmp_path / 'out'}", "decode.batch_size=2",
                 "score.batch_size=2", *(f"{k}={v}" for k, v in configs["llm-iqa"].items() if name == "llm-iqa")]
    if name != "llm-iqa":
        overrides += [f"{name}.{k}={v}" for k, v in sections.items()]
    run_score(load_config(ScoreConfig, None, overrides))
    rows = {Path(r["path"]).name: r for r in pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()}
    files = sorted(src.iterdir())
    results = rayiqa.create_scorer(name, **configs[name]).score([str(p) for p in files])
    assert len(rows) == 3
    for p, r in zip(files, results):
        assert rows[p.name]["score"] == pytest.approx(r.score, abs=1e-5)
        if name == "llm-iqa":
            assert rows[p.name]["crop_boxes"] == r.evidence["crop_boxes"]


def test_llm_tta_scorer_and_the_endpoint_deployment_agree(configs: dict, tmp_path: Path) -> None:
    """One batch of 6 (>= 2k: adapted) through the scorer and through Serve's TTA deployment in-process,
    from one source weights file."""
    from rayiqa.config.serve import ScorerModelConfig
    from rayiqa.config.tta import TTAParams
    from rayiqa.methods.llm_tta import source_backbone
    from rayiqa.serve.base import ScorerDeployment

    weights = tmp_path / "backbone.pt"
    torch.save(source_backbone(TTAParams(**configs["llm-tta"])).state_dict(), weights)
    cfg = {**configs["llm-tta"], "weights": str(weights)}
    images = [np.asarray(Image.open(p).convert("RGB")) for p in _samples(6)]
    results = rayiqa.create_scorer("llm-tta", **cfg).score(images)
    served = ScorerDeployment.func_or_class(ScorerModelConfig(kind="llm-tta", **cfg)).score_images(images)
    assert all(r.evidence["adapted"] for r in results)
    assert [r.score for r in results] == pytest.approx([s["score"] for s in served], abs=1e-6)
    assert [r.evidence["cluster"] for r in results] == [s["evidence"]["cluster"] for s in served]


def test_llm_tta_adapt_false_is_a_call_option_the_endpoint_passes_per_request(configs: dict) -> None:
    """`score(images, adapt=False)` gives source scores; in one Serve batch, a request's `adapt: false`
    scores its images apart, so the others still form one adapted batch of their own."""
    from rayiqa.config.serve import ScorerModelConfig
    from rayiqa.serve.base import ScorerDeployment

    images = [np.asarray(Image.open(p).convert("RGB")) for p in _samples(7)]
    scorer = rayiqa.create_scorer("llm-tta", **configs["llm-tta"])
    source = scorer.score(images[:6], adapt=False)
    adapted = scorer.score(images[:6])
    assert not any(r.evidence["adapted"] or r.evidence["p_good"] for r in source)
    assert [r.score for r in source] == pytest.approx([r.evidence["base_score"] for r in adapted], abs=1e-6)
    assert all(r.evidence["adapted"] for r in adapted)

    deployment = ScorerDeployment.func_or_class(ScorerModelConfig(kind="llm-tta", **configs["llm-tta"]))
    options = [{"adapt": True, "requirement": "ignored"}] * 6 + [{"adapt": False}]  # two requests' images
    served = deployment.score_images(images, options)
    assert [r["evidence"]["batch_size"] for r in served] == [6] * 6 + [1]
    assert all(r["evidence"]["adapted"] for r in served[:6]) and served[6]["evidence"]["adapted"] is False


def test_an_image_the_model_refuses_is_that_images_error(configs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from rayiqa.scorers.llm_iqa import LevelModel

    scorer = rayiqa.create_scorer("llm-iqa", mllms=configs["llm-iqa"]["mllms"], method={"segmentation": False})
    real = LevelModel.probs

    def refuse_wide(self, requests):
        if any(ims[0].shape[1] > 60 for ims in requests):
            raise ValueError("prompt too long (stand-in)")
        return real(self, requests)

    monkeypatch.setattr(LevelModel, "probs", refuse_wide)
    narrow, wide = np.zeros((40, 40, 3), np.uint8), np.zeros((40, 80, 3), np.uint8)
    results = scorer.score([narrow, wide, narrow])
    assert [r.score is None for r in results] == [False, True, False]
    assert "prompt too long" in results[1].evidence["error"] and np.isfinite(results[0].score)
    [alone] = scorer.score([wide])
    assert alone.score is None and alone.evidence["error"].startswith("model_error: ValueError")
