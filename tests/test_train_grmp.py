"""GRMP-IQA on Ray Train: meta-pretraining equals the single-process update for any worker count,
resumes from its checkpoint, and still equals it after a worker is SIGKILLed mid-run; a QGR
fine-tuning step equals a direct computation and records its angle."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faults import TRAIN_WORKER_CLASS, KillAfterCheckpoint, actors
from rayiqa.config.grmp import GRMPFinetuneConfig, GRMPTrainConfig
from rayiqa.data import load_dataset, make_synthetic_set, min_max_normalize, split_rows
from rayiqa.io.samples import samples_dir
from rayiqa.methods.grmp_iqa import (
    apply_meta_update,
    build_meta_tasks,
    mean_delta,
    meta_batches,
    model_quality_loss,
    qgr_gradients,
    quality_loss,
    semantic_kl,
    task_delta,
)
from rayiqa.models.clip_prompt import reference_semantic_logits, scene_prompts
from rayiqa.train.grmp import (
    build_model,
    _read_state,
    epoch_seed,
    fewshot_grmp,
    finetune_grmp,
    load_images,
    load_model,
    pretrain_grmp,
    split_meta_rows,
)

pytestmark = pytest.mark.filterwarnings("ignore:CLIP 'tiny' has random weights")
TYPES = ["gaussian_blur", "gaussian_noise", "jpeg"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """2 pristine 64 px photos x 3 distortion types x 3 levels = 18 labelled images, 3 meta-tasks."""
    src = tmp_path_factory.mktemp("pristine")
    for name in ("astronaut", "chelsea"):
        with Image.open(samples_dir() / f"{name}.png") as image:
            image.convert("RGB").resize((64, 64)).save(src / f"{name}.png")
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_set(src, out, TYPES, levels=3, seed=0)
    return str(out)


def pretrain_cfg(root: str, storage: Path, name: str, workers: int, epochs: int) -> GRMPTrainConfig:
    return GRMPTrainConfig.model_validate({
        "model": {"clip": "tiny", "seed": 0},
        "data": {"dataset": "synthetic", "root": root, "synthetic_source": None},
        # large steps so θ moves far beyond float noise; all samples of each task (no subsampling)
        "meta": {"alpha": 1e-2, "beta": 0.5, "epochs": epochs, "tasks_per_batch": 2, "task_batch_size": None,
                 "seed": 1},
        "run": {"storage_path": str(storage), "name": name, "num_workers": workers, "cpus_per_worker": 0.5},
    })


def direct_meta_theta(cfg: GRMPTrainConfig) -> dict[str, torch.Tensor]:
    """Eqs. 4-6 in this process with the methods' functions: mean over each mini-batch's task deltas."""
    model = build_model(cfg.model)
    model.train_only(model.prompt_parameters())
    rows = min_max_normalize(load_dataset("synthetic", cfg.data.root), invert_dmos=True)
    data = load_images(rows, model, cfg.data)
    tasks = build_meta_tasks([r.distortion for r in data.rows], cfg.meta.support_fraction, cfg.meta.seed)
    theta = model.prompt_parameters()
    loss_fn = model_quality_loss(model)
    for epoch in range(1, cfg.meta.epochs + 1):
        for batch in meta_batches(tasks, cfg.meta.tasks_per_batch, epoch_seed(cfg.meta.seed, epoch)):
            deltas = [
                task_delta(theta, (data.images[list(t.support)], data.labels[list(t.support)]),
                           (data.images[list(t.query)], data.labels[list(t.query)]), loss_fn, cfg.meta.alpha)
                for t in batch
            ]
            apply_meta_update(theta, mean_delta(deltas), cfg.meta.beta)
    return {name: p.detach().clone() for name, p in theta.items()}


def theta_of(checkpoint: str) -> dict[str, torch.Tensor]:
    model, _ = load_model(checkpoint)
    return {name: p.detach() for name, p in model.prompt_parameters().items()}


def test_meta_pretraining_two_workers_and_resume_equal_one_process(ray_local, synthetic_root, tmp_path) -> None:
    one = pretrain_grmp(pretrain_cfg(synthetic_root, tmp_path, "w1", workers=1, epochs=2))
    first = pretrain_grmp(pretrain_cfg(synthetic_root, tmp_path, "w2", workers=2, epochs=1))
    resumed = pretrain_grmp(pretrain_cfg(synthetic_root, tmp_path, "w2", workers=2, epochs=2))

    # the second w2 run continued after epoch 1 instead of starting over
    assert [(h["epoch"], h["resumed_from"]) for h in one.history] == [(1, 0), (2, 0)]
    assert [(h["epoch"], h["resumed_from"]) for h in resumed.history] == [(1, 0), (2, 1)]
    assert resumed.history[0] == first.history[0]
    # 3 tasks, k = 2: two meta-updates per epoch; zero-shot SRCC reported every epoch
    assert all(h["meta_updates"] == 2 and -1 <= h["zero_shot_srcc"] <= 1 for h in one.history + resumed.history)

    expected = direct_meta_theta(pretrain_cfg(synthetic_root, tmp_path, "direct", workers=1, epochs=2))
    initial = {name: p.detach() for name, p in build_model(pretrain_cfg(
        synthetic_root, tmp_path, "x", 1, 1).model).prompt_parameters().items()}
    for run in (one, resumed):
        theta = theta_of(run.checkpoint)
        assert theta.keys() == expected.keys() == {"ctx", "visual_prompt.tokens"}
        for name in expected:
            torch.testing.assert_close(theta[name], expected[name], atol=1e-5, rtol=1e-4)
            assert (expected[name] - initial[name]).abs().max() > 1e-3  # θ really moved


def test_worker_killed_mid_pretraining_resumes_and_ends_where_one_process_does(ray_local, synthetic_root, tmp_path) -> None:
    epochs = 3
    workers_before = len(actors(TRAIN_WORKER_CLASS, alive=False))
    with KillAfterCheckpoint(tmp_path / "killed") as killer:
        run = pretrain_grmp(pretrain_cfg(synthetic_root, tmp_path, "killed", workers=2, epochs=epochs))

    assert killer.killed_pid is not None, "no checkpoint was registered while workers were alive"
    # a second worker group replaced the first and went on from the checkpoint it was handed
    assert len(actors(TRAIN_WORKER_CLASS, alive=False)) - workers_before == 4
    resumed = run.history[-1]["resumed_from"]
    assert killer.checkpointed["epoch"] <= resumed < epochs
    assert [(h["epoch"], h["resumed_from"]) for h in run.history] == [
        (e, 0 if e <= resumed else resumed) for e in range(1, epochs + 1)]
    # every meta-update exactly once: the prompts equal Eqs. 4-6 run in this process
    expected = direct_meta_theta(pretrain_cfg(synthetic_root, tmp_path, "direct", workers=1, epochs=epochs))
    theta = theta_of(run.checkpoint)
    for name in expected:
        torch.testing.assert_close(theta[name], expected[name], atol=1e-5, rtol=1e-4)


def test_held_out_types_must_exist(synthetic_root) -> None:
    rows = load_dataset("synthetic", synthetic_root)
    train, held = split_meta_rows(rows, ["jpeg"])
    assert {r.distortion for r in train} == {"gaussian_blur", "gaussian_noise"} and len(held) == 6
    with pytest.raises(ValueError, match="motion_blur"):
        split_meta_rows(rows, ["motion_blur"])


def test_qgr_finetune_step_equals_direct_computation(ray_local, synthetic_root, tmp_path) -> None:
    split = split_rows(load_dataset("synthetic", synthetic_root), train_fraction=0.5, seed=0)
    # labels flipped (1 - y): for this seed-0 tiny model it puts G_qua at ~87 deg to G_sem, so Eq. 8 projects
    train_rows = [replace(r, score=1 - r.score) for r in min_max_normalize(split.train, invert_dmos=True)]
    eval_rows = min_max_normalize(split.test, invert_dmos=True)
    cfg = GRMPFinetuneConfig.model_validate({
        "model": {"clip": "tiny", "seed": 0},
        "data": {"dataset": "synthetic", "root": synthetic_root, "synthetic_source": None},
        # one step over all 9 training images, split 5 / 4 over the two workers
        "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": len(train_rows), "last_n_blocks": 2, "qgr_lambda": 5.0},
        "run": {"storage_path": str(tmp_path), "name": "ft", "num_workers": 2, "cpus_per_worker": 0.5},
    })
    result = finetune_grmp(cfg, train_rows, eval_rows)

    # direct single-process computation of the same step
    model = build_model(cfg.model)
    reference = model.semantic_reference()
    params = model.finetune_parameters(2, True)
    model.train_only(params)
    leaves = list(params.values())
    data = load_images(train_rows, model, cfg.data)
    tokens = model.tokenize(scene_prompts())
    quality, semantic = model.quality_and_semantic_logits(data.images, tokens)
    with torch.no_grad():
        sem_ref = reference_semantic_logits(reference, data.images, tokens)
    step = qgr_gradients(quality_loss(quality, data.labels), semantic_kl(sem_ref, semantic), leaves, lam=5.0)
    optimizer = torch.optim.AdamW(leaves, lr=1e-3, weight_decay=0.01)
    # plain fine-tuning (no QGR) from the same start, to show that QGR changed the step
    g_qua = torch.autograd.grad(quality_loss(model(data.images), data.labels), leaves, materialize_grads=True)
    plain_model = [p.detach().clone() for p in leaves]
    plain_optimizer = torch.optim.AdamW([p.requires_grad_(True) for p in plain_model], lr=1e-3, weight_decay=0.01)
    for p, g in zip(plain_model, g_qua):
        p.grad = g
    plain_optimizer.step()
    for p, g in zip(leaves, step.grads):
        p.grad = g
    optimizer.step()

    epoch1 = result.history[1]
    assert result.history[0]["epoch"] == 0 and epoch1["epoch"] == 1
    assert len(epoch1["angle_deg"]) == 1
    assert epoch1["angle_deg"][0] == pytest.approx(step.angle_deg, abs=1e-3)
    assert step.angle_deg < 90  # G_qua · G_sem > 0: Eq. 8 projects here

    tuned, _ = load_model(result.checkpoint)
    tuned_params = dict(tuned.named_parameters())
    moved_from_plain, compared, total = 0.0, 0, 0
    for (name, p), q, g in zip(params.items(), plain_model, step.grads):
        # AdamW's first step is lr * g / (|g| + eps): where |g| is small that ratio amplifies the float noise
        # of the distributed sum, so compare the entries with |G_qgr| > 1e-5 (over 90 % of them) to 1 % of lr
        mask = g.abs() > 1e-5
        torch.testing.assert_close(tuned_params[name][mask], p.detach()[mask], atol=1e-5, rtol=0)
        compared, total = compared + int(mask.sum()), total + mask.numel()
        moved_from_plain = max(moved_from_plain, float((p.detach() - q.detach()).abs().max()))
    assert compared > 0.9 * total
    assert moved_from_plain > 1e-3  # QGR's step differs from plain fine-tuning's
    # frozen weights stay as built
    fresh = dict(build_model(cfg.model).named_parameters())
    frozen = [n for n in fresh if n not in params]
    assert frozen and all(torch.equal(tuned_params[n], fresh[n]) for n in frozen)


def test_fewshot_protocol_runs_each_split_and_reports_medians(ray_local, synthetic_root, tmp_path) -> None:
    cfg = GRMPFinetuneConfig.model_validate({
        "mode": "fewshot",
        "model": {"clip": "tiny", "seed": 0},
        "data": {"dataset": "synthetic", "root": synthetic_root, "synthetic_source": None},
        "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 2, "last_n_blocks": 1, "train_fraction": 0.5},
        "fewshot": {"sizes": [4], "repeats": 2},
        "run": {"storage_path": str(tmp_path), "name": "fs", "num_workers": 1, "cpus_per_worker": 0.5},
    })
    results = fewshot_grmp(cfg)
    assert sorted(results) == [4]
    for n in (4,):
        finals = []
        for i in range(2):
            states = [_read_state(c) for c in (tmp_path / f"fs-n{n}-split{i}").glob("checkpoint_*") if c.is_dir()]
            final = max(states, key=lambda s: s["epoch"])["history"][-1]
            assert final["epoch"] == 1 and len(final["angle_deg"]) == n // 2  # n samples in batches of 2
            finals.append(final)
        for key in ("srcc", "plcc"):  # the median of two splits is their mean
            assert results[n][key] == pytest.approx(np.mean([f[key] for f in finals]), abs=1e-9)
    with pytest.raises(ValueError, match="fewshot.sizes: 50"):
        fewshot_grmp(cfg.model_copy(update={"fewshot": cfg.fewshot.model_copy(update={"sizes": [50]})}))
