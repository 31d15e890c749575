"""PromptIQA on Ray: Ray Train (2 DDP workers) writes per-epoch checkpoints and resumes; the Serve deployment."""
import json

import numpy as np
import pytest
import torch

from rayiqa.config import load_config
from rayiqa.config.promptiqa import PromptIQAModelConfig, PromptIQATrainConfig
from rayiqa.models.promptiqa import load_promptiqa
from rayiqa.serve.base import UnknownRequirement

SMALL_MODEL = ["model.image_size=32", "model.dim=16", "model.prompt_depth=1", "model.ispp_depth=1", "model.fusion_depth=2"]


def test_train_writes_checkpoints_and_resumes(ray_local, pristine, tmp_path):
    from rayiqa.train.promptiqa import train_promptiqa

    syn = tmp_path / "syn"
    overrides = [
        f"datasets=[{{root: {syn}, label: ssim}}, {{root: {syn}, label: psnr_inv}}]",
        f"synthetic.pristine={pristine}", "synthetic.types=[gaussian_blur, jpeg]", "synthetic.levels=3",
        "batch_size=6", "ispp_size=4", "epochs=1", "optim.lr=1e-3", f"storage_path={tmp_path / 'runs'}", "name=run",
        *SMALL_MODEL,
    ]
    cfg = load_config(PromptIQATrainConfig, None, overrides)
    # 4 refs -> 3 train refs x 2 types x 3 levels = 18 images per dataset -> 3 episodes of 6; 2 datasets -> 6 episodes,
    # 3 per worker: one epoch is 3 optimiser steps.
    first = train_promptiqa(cfg)
    assert first.error is None
    assert first.metrics["epoch"] == 1 and first.metrics["step"] == 3
    for key in ("synthetic:ssim", "synthetic:psnr_inv"):
        assert -1.0 <= first.metrics[f"val/{key}/srcc"] <= 1.0
    saved = first.checkpoint.path
    with first.checkpoint.as_directory() as folder:
        state = torch.load(f"{folder}/train_state.pt", weights_only=False)
        assert (state["epoch"], state["step"]) == (1, 3)
        model_cfg = PromptIQAModelConfig(**json.loads(open(f"{folder}/model_config.json").read()))
        epoch1 = load_promptiqa(folder, model_cfg)

    second = train_promptiqa(cfg.model_copy(update={"epochs": 2}))  # same storage_path + name: resumes
    assert second.error is None
    assert second.metrics["epoch"] == 2 and second.metrics["step"] == 6  # continued from epoch 1, step 3
    assert second.checkpoint.path != saved
    with second.checkpoint.as_directory() as folder:
        epoch2 = load_promptiqa(folder, model_cfg)
    changed = any(not torch.equal(a, b) for a, b in zip(epoch1.state_dict().values(), epoch2.state_dict().values()))
    assert changed


RESULT_TIMEOUT_S = 120  # every wait on a Serve handle has a limit: a lost replica fails the test, never hangs it


def _images(n, seed):
    return [np.random.default_rng([seed, i]).integers(0, 256, (24 + i, 20, 3), dtype=np.uint8) for i in range(n)]


def test_serve_deployment_requirements_and_scores(ray_local):
    from ray import serve

    from rayiqa.config.serve import ServeConfig
    from rayiqa.serve.app import build_app
    from rayiqa.serve.promptiqa import STORE_NAMESPACE

    small = load_config(PromptIQAModelConfig, None, [o.removeprefix("model.") for o in SMALL_MODEL])
    model = {"kind": "promptiqa", "model": small.model_dump(), "deployment": {"num_cpus": 0.25}}
    serve.run(build_app(ServeConfig(models={"promptiqa": model}, ingress={"num_cpus": 0.1})), name="promptiqa-test", route_prefix=None)
    handle = serve.get_deployment_handle("model-promptiqa", app_name="promptiqa-test")
    try:
        ispp = _images(5, 1)
        scores = [0.1, 0.3, 0.5, 0.7, 0.9]
        assert handle.register_requirement.remote("mos", ispp, scores).result(timeout_s=RESULT_TIMEOUT_S) == {"name": "mos", "k": 5}
        handle.register_requirement.remote("dmos", ispp, [1 - s for s in scores]).result(timeout_s=RESULT_TIMEOUT_S)
        assert handle.list_requirements.remote().result(timeout_s=RESULT_TIMEOUT_S) == ["dmos", "mos"]

        targets = _images(3, 2)
        mos = handle.score.remote(targets, {"requirement": "mos"}).result(timeout_s=RESULT_TIMEOUT_S)
        dmos = handle.score.remote(targets, {"requirement": "dmos"}).result(timeout_s=RESULT_TIMEOUT_S)
        assert len(mos) == 3 and all(0.0 < r["score"] < 1.0 for r in mos)
        assert mos[0]["evidence"] == {"requirement": "mos", "ispp_size": 5}
        assert any(abs(a["score"] - b["score"]) > 1e-6 for a, b in zip(mos, dmos))
        again = handle.score.remote(targets[:1], {"requirement": "mos"}).result(timeout_s=RESULT_TIMEOUT_S)
        assert again[0]["score"] == pytest.approx(mos[0]["score"], abs=1e-6)  # batched alone or with others: same

        mixed = handle.score.remote([targets[0], np.zeros((4, 4), np.uint8)], {"requirement": "mos"}).result(timeout_s=RESULT_TIMEOUT_S)
        assert "score" in mixed[0] and "uint8 RGB" in mixed[1]["evidence"]["error"]

        with pytest.raises(UnknownRequirement):
            handle.score.remote(targets, {"requirement": "nope"}).result(timeout_s=RESULT_TIMEOUT_S)
        with pytest.raises(ValueError, match="3 images but 2 scores"):
            handle.register_requirement.remote("bad", ispp[:3], [0.1, 0.2]).result(timeout_s=RESULT_TIMEOUT_S)
    finally:
        serve.delete("promptiqa-test")
        ray_local.kill(ray_local.get_actor("promptiqa-test-model-promptiqa-requirements", namespace=STORE_NAMESPACE))
