"""GRMP-IQA serving: the plain scorer and the Serve deployment score p(high | x) of Eq. 2 from a checkpoint."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rayiqa.config.grmp import GRMPModelConfig
from rayiqa.methods.grmp_iqa import p_high
from rayiqa import create_scorer
from rayiqa.config.serve import ScorerModelConfig
from rayiqa.models.grmp_checkpoint import build_model, save_model
from rayiqa.serve.base import ScorerDeployment

MODEL_CFG = GRMPModelConfig(clip="tiny", seed=3)


def load_grmp_scorer(checkpoint: str):
    """The `grmp` scorer as the endpoint answers: one result dict per image (arrays as given)."""
    scorer = create_scorer("grmp", checkpoint=checkpoint)
    return lambda images: [r.as_dict() for r in scorer.score_arrays(images)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder as the trainers write it, with prompts moved off their initial values."""
    with pytest.warns(UserWarning, match="random weights"):
        model = build_model(MODEL_CFG)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.prompt_parameters().values():
            p.add_(torch.randn(p.shape, generator=generator) * 2.0)
    directory = tmp_path_factory.mktemp("grmp-ckpt")
    save_model(model, MODEL_CFG, directory)
    return directory


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(64, 64), (80, 120), (50, 70)]]


def expected_scores(checkpoint: Path, images: list[np.ndarray]) -> tuple[list[float], torch.Tensor]:
    """An independent computation: rebuild the model, load the state dict, preprocess, Eq. 2."""
    with pytest.warns(UserWarning, match="random weights"):
        model = build_model(MODEL_CFG)
    model.load_state_dict(torch.load(checkpoint / "model.pt", weights_only=True))
    model.eval()
    transform = model.image_transform()
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.fromarray(im)) for im in images]))
    return p_high(logits).tolist(), logits


def test_scorer_gives_p_high_and_both_logits(checkpoint: Path, images: list[np.ndarray]) -> None:
    scores, logits = expected_scores(checkpoint, images)
    results = load_grmp_scorer(str(checkpoint))(images)
    assert [r["score"] for r in results] == pytest.approx(scores, abs=1e-6)
    for r, (high, low) in zip(results, logits.tolist()):
        assert r["evidence"]["logit_high"] == pytest.approx(high, abs=1e-5)
        assert r["evidence"]["logit_low"] == pytest.approx(low, abs=1e-5)
        # p(high) is the two-way softmax of the logits it reports
        assert r["score"] == pytest.approx(1 / (1 + math.exp(low - high)), abs=1e-6)
        assert r["evidence"]["weights"] == "random-init"
    # the loaded prompts are the saved (moved) ones, not a fresh model's
    with pytest.warns(UserWarning, match="random weights"):
        fresh = build_model(MODEL_CFG).eval()
    with torch.no_grad():
        transform = fresh.image_transform()
        fresh_scores = p_high(fresh(torch.stack([transform(Image.fromarray(im)) for im in images]))).tolist()
    assert np.abs(np.array(fresh_scores) - scores).max() > 1e-3


def test_scorer_turns_bad_images_into_error_results(checkpoint: Path, images: list[np.ndarray]) -> None:
    bad = [np.zeros((8, 8), dtype=np.uint8), images[0].astype(np.float32), "not an image"]
    results = load_grmp_scorer(str(checkpoint))([bad[0], images[0], bad[1], bad[2]])
    assert [("score" in r) for r in results] == [False, True, False, False]
    assert "shape (8, 8)" in results[0]["evidence"]["error"]
    assert "float32" in results[2]["evidence"]["error"]
    assert "str" in results[3]["evidence"]["error"]
    assert results[1]["score"] == pytest.approx(expected_scores(checkpoint, images[:1])[0][0], abs=1e-6)


def test_missing_checkpoint_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.pt is missing"):
        load_grmp_scorer(str(tmp_path))


def test_deployment_through_a_serve_handle(ray_local, checkpoint: Path, images: list[np.ndarray]) -> None:
    from ray import serve

    scores, _ = expected_scores(checkpoint, images)
    serve.start(proxy_location="Disabled")  # handle calls only: no HTTP proxy actor
    try:
        handle = serve.run(ScorerDeployment.bind(ScorerModelConfig.model_validate(
            {"kind": "grmp", "checkpoint": str(checkpoint), "deployment": {"max_batch_size": 4}})), name="grmp-test", route_prefix=None)
        responses = [handle.score.remote(images, {}), handle.score.remote([images[2], np.zeros((3, 3))], {})]
        first, second = (r.result(timeout_s=300) for r in responses)
    finally:
        serve.shutdown()
    assert [r["score"] for r in first] == pytest.approx(scores, abs=1e-6)
    assert second[0]["score"] == pytest.approx(scores[2], abs=1e-6)
    assert "error" in second[1]["evidence"] and "score" not in second[1]
