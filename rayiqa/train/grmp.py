"""GRMP-IQA on Ray Train: meta-prompt pre-training (Eqs. 4-6), QGR fine-tuning (Eqs. 7-8), few-shot protocol.

Both stages run a `TorchTrainer` whose workers all hold the same model; the math comes from
`rayiqa.methods.grmp_iqa`. Meta-pretraining splits the k tasks of each mini-batch across workers
and all-reduces the SUM of their θ-deltas and the task count, so the update equals the
single-process one. Fine-tuning splits each global batch across workers and all-reduces G_qua and
G_sem (as sums of per-worker gradients of losses weighted by their share of the batch) before
Eq. 8, because QGR must project the global gradients; that is why it does not use DDP, whose hooks
`torch.autograd.grad` bypasses. Meta-tasks need random access by index, so every worker decodes
the (small) labelled image set itself instead of streaming Ray Data shards. Checkpoints hold the
model's files (`rayiqa.models.grmp_checkpoint`) and the run state (`rayiqa.train.skeleton`'s
TRAIN_STATE_FILE: epoch, per-epoch history, and when fine-tuning the optimiser and scheduler);
rerunning with the same `run.name`, or a Ray Train retry after a worker failure (up to
`run.max_failures`), resumes from the latest one. An s3:// `run.storage_path` is reached with
`data.storage`.
"""
from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor

from rayiqa.config.grmp import GRMPDataConfig, GRMPFinetuneConfig, GRMPModelConfig, GRMPTrainConfig
from rayiqa.data import (
    IQARow,
    load_dataset,
    median_over_repeats,
    min_max_normalize,
    repeated_splits,
    split_rows,
)
from rayiqa.io.read import ImageReadError, read_rgb
from rayiqa.methods.grmp_iqa import (
    MetaTask,
    apply_meta_update,
    build_meta_tasks,
    meta_batches,
    model_quality_loss,
    p_high,
    qgr_gradients,
    quality_loss,
    semantic_kl,
    task_delta,
)
from rayiqa.methods.metrics import plcc, srcc
from rayiqa.models.clip_prompt import (
    PromptedCLIP,
    reference_semantic_logits,
    scene_prompts,
)
from rayiqa.models.grmp_checkpoint import build_model, load_model, save_model
from rayiqa.runtime import ensure_ray
from rayiqa.train.skeleton import fit, load_train_state, report, resume_folder, run_config, save_train_state
from rayiqa.train.synthetic_sets import ensure_synthetic_set

log = logging.getLogger(__name__)

EVAL_BATCH = 64

# ---- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    """Decoded, preprocessed images with their [0, 1] labels; `rows` are the rows that decoded."""

    images: Tensor  # (N, 3, H, W), the model's own preprocessing
    labels: Tensor  # (N,)
    rows: list[IQARow]


def load_rows(cfg: GRMPDataConfig) -> list[IQARow]:
    """The dataset's rows (raw scores), building the synthetic set at `root` first when `synthetic_source` is set
    and `root` has none yet (an s3:// root is what Ray Train workers on other nodes can read)."""
    if cfg.synthetic_source is not None:
        if cfg.dataset != "synthetic":
            raise ValueError(f"data.synthetic_source is set but data.dataset is {cfg.dataset!r}, not 'synthetic'")
        ensure_synthetic_set(cfg.root, cfg.synthetic_source, cfg.synthetic_types, cfg.synthetic_levels, 0, cfg.storage)
    rows = load_dataset(cfg.dataset, cfg.root, cfg.storage, **cfg.options)
    return rows[: cfg.limit] if cfg.limit else rows


def load_images(rows: Sequence[IQARow], model: PromptedCLIP, cfg: GRMPDataConfig) -> ImageSet:
    """Read, decode and preprocess every row's image; unreadable ones are dropped with a warning naming them."""
    transform = model.image_transform(is_train=False)
    tensors, labels, kept = [], [], []
    for row in rows:
        try:
            image = read_rgb(row.image, cfg)
        except ImageReadError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            continue
        tensors.append(transform(Image.fromarray(image)))
        labels.append(row.score)
        kept.append(row)
    if not kept:
        raise ValueError(f"none of the {len(rows)} images of dataset {cfg.dataset!r} could be read")
    return ImageSet(torch.stack(tensors), torch.tensor(labels, dtype=torch.float32), kept)


# ---- checkpoints ------------------------------------------------------------------------------


def _read_state(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's run state: epoch and per-epoch history."""
    return load_train_state(Path(directory))


def _saver(model: PromptedCLIP, cfg: GRMPModelConfig, optimizer: Any = None, scheduler: Any = None, **state: Any):
    """What `report` calls on rank 0 to fill a checkpoint folder: the model's files and the run state."""
    def save(folder: Path) -> None:
        save_model(model, cfg, folder)
        save_train_state(folder, optimizer, scheduler, **state)
    return save


# ---- distributed helpers ----------------------------------------------------------------------


def _rank_world() -> tuple[int, int]:
    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def all_reduce_sum(tensors: list[Tensor]) -> list[Tensor]:
    """Element-wise sum of each tensor over the workers (identity without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


@torch.no_grad()
def predict(model: PromptedCLIP, images: Tensor, batch_size: int = EVAL_BATCH) -> Tensor:
    """p(high | x) of Eq. 2 for every image, in eval mode."""
    was_training = model.training
    model.eval()
    scores = torch.cat([p_high(model(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return scores


def evaluate(model: PromptedCLIP, images: Tensor, labels: Tensor) -> dict[str, float]:
    """SRCC and PLCC of p(high | x) against labels, each worker scoring its share of the images."""
    rank, world = _rank_world()
    mine = torch.arange(len(images))[rank::world]
    pairs = list(zip(mine.tolist(), predict(model, images[mine]).tolist()))
    gathered: list[list[tuple[int, float]]] = [pairs]
    if dist.is_initialized() and world > 1:
        gathered = [[] for _ in range(world)]
        dist.all_gather_object(gathered, pairs)
    scores = np.empty(len(images))
    for index, score in (pair for part in gathered for pair in part):
        scores[index] = score
    return {"srcc": srcc(scores, labels.numpy()), "plcc": plcc(scores, labels.numpy())}


@dataclass(frozen=True)
class TrainResult:
    """Where the last checkpoint is and the per-epoch metrics read back from it."""

    checkpoint: str
    history: list[dict[str, Any]]


def _fit(loop: Any, config: dict[str, Any], cfg: GRMPTrainConfig | GRMPFinetuneConfig) -> TrainResult:
    """Run `loop` on Ray Train under `cfg.run`; the last checkpoint and its history."""
    run = cfg.run
    result = fit(loop, config, run_config(run.name, run.storage_path, run.max_failures, storage=cfg.data.storage),
                 num_workers=run.num_workers, cpus_per_worker=run.cpus_per_worker, use_gpu=run.use_gpu)
    if result.checkpoint is None:
        raise RuntimeError(f"the run reported no checkpoint (error: {result.error})")
    with result.checkpoint.as_directory() as directory:
        history = _read_state(directory)["history"]
    return TrainResult(result.checkpoint.path, history)


# ---- meta-prompt pre-training (Sec. 3.3) ------------------------------------------------------


def _subsample(indices: Sequence[int], cap: int | None, rng: random.Random) -> list[int]:
    return list(indices) if cap is None or len(indices) <= cap else sorted(rng.sample(list(indices), cap))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's batch order, the same on every worker."""
    return seed * 100_003 + epoch


def meta_epoch(model: PromptedCLIP, data: ImageSet, tasks: Sequence[MetaTask], cfg: GRMPTrainConfig,
               epoch: int, rank: int, world: int) -> int:
    """One epoch of Eqs. 4-6 over the tasks; this worker adapts its share of each mini-batch.

    Support/query subsets and the batch order depend only on (seed, epoch, task), never on the
    worker, so any worker count gives the same update. Returns the number of meta-updates.
    """
    meta = cfg.meta
    theta = model.prompt_parameters()
    loss_fn = model_quality_loss(model)
    batches = meta_batches(tasks, meta.tasks_per_batch, seed=epoch_seed(meta.seed, epoch))
    for batch in batches:
        sums = [torch.zeros_like(p) for p in theta.values()]
        for task in batch[rank::world]:
            rng = random.Random(f"{meta.seed}/{epoch}/{task.name}")
            support = _subsample(task.support, meta.task_batch_size, rng)
            query = _subsample(task.query, meta.task_batch_size, rng)
            delta = task_delta(
                theta,
                (data.images[support], data.labels[support]),
                (data.images[query], data.labels[query]),
                loss_fn,
                meta.alpha,
                meta.inner_optimizer,
            )
            sums = [s + delta[name] for s, name in zip(sums, theta)]
        *sums, count = all_reduce_sum([*sums, torch.tensor([float(len(batch[rank::world]))])])
        apply_meta_update(theta, {name: s / count for name, s in zip(theta, sums)}, meta.beta)
    return len(batches)


def split_meta_rows(rows: Sequence[IQARow], held_out: Sequence[str]) -> tuple[list[IQARow], list[IQARow]]:
    """(training rows, held-out rows) by distortion type; every row must name its distortion."""
    unnamed = sum(row.distortion is None for row in rows)
    if unnamed:
        raise ValueError(f"meta-tasks need distortion types: {unnamed} of {len(rows)} rows have none")
    unknown = sorted(set(held_out) - {row.distortion for row in rows})
    if unknown:
        raise ValueError(f"meta.held_out_types {unknown} are not distortion types of the dataset")
    return [r for r in rows if r.distortion not in held_out], [r for r in rows if r.distortion in held_out]


def _pretrain_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: meta-pretrain the prompts, report zero-shot SRCC and a checkpoint per epoch."""
    cfg = GRMPTrainConfig.model_validate(config["cfg"])
    model = build_model(cfg.model)
    model.train_only(model.prompt_parameters())
    model.train()
    train = load_images(config["train_rows"], model, cfg.data)
    held_out = load_images(config["eval_rows"], model, cfg.data) if config["eval_rows"] else None
    tasks = build_meta_tasks([row.distortion for row in train.rows], cfg.meta.support_fraction, cfg.meta.seed)
    state: dict[str, Any] = {"epoch": 0, "history": []}
    with resume_folder() as folder:
        if folder is not None:
            model.load_state_dict(load_model(folder)[0].state_dict())
            state = _read_state(folder)
    rank, world = _rank_world()
    resumed_from = state["epoch"]
    for epoch in range(state["epoch"] + 1, cfg.meta.epochs + 1):
        updates = meta_epoch(model, train, tasks, cfg, epoch, rank, world)
        # zero-shot: held-out distortion types when given, else the query sets of the training tasks
        if held_out is not None:
            scores = evaluate(model, held_out.images, held_out.labels)
        else:
            query = [i for task in tasks for i in task.query]
            scores = evaluate(model, train.images[query], train.labels[query])
        metrics = {"epoch": epoch, "resumed_from": resumed_from, "meta_updates": updates,
                   "zero_shot_srcc": scores["srcc"], "zero_shot_plcc": scores["plcc"]}
        state = {"epoch": epoch, "history": [*state["history"], metrics]}
        report(metrics, _saver(model, cfg.model, **state))


def pretrain_grmp(cfg: GRMPTrainConfig) -> TrainResult:
    """Meta-prompt pre-training on Ray Train; resumes when `run.name` already holds a checkpoint."""
    ensure_ray(cfg.ray)
    train_rows, eval_rows = split_meta_rows(min_max_normalize(load_rows(cfg.data), invert_dmos=True),
                                            cfg.meta.held_out_types)
    config = {"cfg": cfg.model_dump(), "train_rows": train_rows, "eval_rows": eval_rows}
    return _fit(_pretrain_loop, config, cfg)


# ---- fine-tuning with QGR (Sec. 3.4) ----------------------------------------------------------


def global_batches(n: int, batch_size: int, world: int, seed: int) -> list[Tensor]:
    """One epoch's shuffled global batches; a last batch smaller than the worker count is dropped."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[i : i + batch_size] for i in range(0, n, batch_size) if len(order[i : i + batch_size]) >= world]


def qgr_step(model: PromptedCLIP, reference: torch.nn.Module, scene_tokens: Tensor, images: Tensor, labels: Tensor,
             share: float, params: Sequence[Tensor], lam: float, per_tensor: bool) -> tuple[list[Tensor], float, float]:
    """This worker's part of one QGR step: (G_qgr over `params`, angle in degrees, its share of L_ce).

    `share` = local / global batch size, so the all-reduced SUM of the weighted gradients is the
    gradient of the global batch mean; G_qua and G_sem are reduced before Eq. 8.
    """
    quality, semantic = model.quality_and_semantic_logits(images, scene_tokens)
    with torch.no_grad():
        sem_reference = reference_semantic_logits(reference, images, scene_tokens)
    l_ce = quality_loss(quality, labels) * share
    l_kl = semantic_kl(sem_reference, semantic) * share
    step = qgr_gradients(l_ce, l_kl, params, lam, per_tensor, reduce=all_reduce_sum)
    return step.grads, step.angle_deg, float(l_ce.detach())


def _finetune_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: fine-tune with QGR, report per-step angles and per-epoch eval SRCC/PLCC."""
    cfg = GRMPFinetuneConfig.model_validate(config["cfg"])
    ft = cfg.finetune
    rank, world = _rank_world()
    if ft.init_checkpoint:
        with ray.train.Checkpoint(ft.init_checkpoint).as_directory() as directory:  # a folder or storage URI
            model, model_cfg = load_model(directory)
    else:
        model, model_cfg = build_model(cfg.model), cfg.model
    reference = model.semantic_reference()  # V^sem: the backbone before any fine-tuning
    params = model.finetune_parameters(ft.last_n_blocks, ft.tune_visual_prompts)
    model.train_only(params)
    model.train()
    leaves = list(params.values())
    optimizer = torch.optim.AdamW(leaves, lr=ft.lr, weight_decay=ft.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=ft.epochs)
    train = load_images(config["train_rows"], model, cfg.data)
    held = load_images(config["eval_rows"], model, cfg.data)
    scene_tokens = model.tokenize(scene_prompts())
    state: dict[str, Any] = {"epoch": 0, "history": [{"epoch": 0, **evaluate(model, held.images, held.labels)}]}
    with resume_folder() as folder:
        if folder is not None:
            model.load_state_dict(load_model(folder)[0].state_dict())
            state = load_train_state(folder, optimizer, scheduler)
    resumed_from = state["epoch"]
    for epoch in range(state["epoch"] + 1, ft.epochs + 1):
        angles, losses = [], []
        for batch in global_batches(len(train.labels), ft.batch_size, world, epoch_seed(ft.seed, epoch)):
            local = batch[rank::world]
            grads, angle, loss = qgr_step(model, reference, scene_tokens, train.images[local], train.labels[local],
                                          len(local) / len(batch), leaves, ft.qgr_lambda, ft.qgr_per_tensor)
            for p, g in zip(leaves, grads):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            angles.append(angle)
            losses.append(float(all_reduce_sum([torch.tensor([loss])])[0]))
        scheduler.step()
        scores = evaluate(model, held.images, held.labels)
        loss = float(np.mean(losses)) if losses else float("nan")
        metrics = {"epoch": epoch, "resumed_from": resumed_from, "loss": loss, "angle_deg": angles, **scores}
        state = {"epoch": epoch, "history": [*state["history"], metrics]}
        report({k: v for k, v in metrics.items() if k != "angle_deg"} | {"angle_deg_mean": float(np.mean(angles))},
               _saver(model, model_cfg, optimizer, scheduler, **state))


def _normalized(rows: Sequence[IQARow]) -> list[IQARow]:
    return min_max_normalize(rows, invert_dmos=True)


def finetune_grmp(cfg: GRMPFinetuneConfig, train_rows: Sequence[IQARow] | None = None,
                  eval_rows: Sequence[IQARow] | None = None) -> TrainResult:
    """QGR fine-tuning on Ray Train. Without rows: the dataset split `train_fraction` / rest (by reference
    image when rows have one), each side min-max scaled to [0, 1] on its own scores."""
    ensure_ray(cfg.ray)
    if train_rows is None or eval_rows is None:
        split = split_rows(load_rows(cfg.data), cfg.finetune.train_fraction, cfg.finetune.seed)
        train_rows, eval_rows = _normalized(split.train), _normalized(split.test)
    config = {"cfg": cfg.model_dump(), "train_rows": list(train_rows), "eval_rows": list(eval_rows)}
    return _fit(_finetune_loop, config, cfg)


def replace_run(cfg: GRMPFinetuneConfig, name: str) -> GRMPFinetuneConfig:
    """`cfg` with another Ray Train run name (one run folder per few-shot split)."""
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": name})})


def fewshot_grmp(cfg: GRMPFinetuneConfig) -> dict[int, dict[str, float]]:
    """The few-shot protocol (Sec. 4.3): for each n, `repeats` splits; fine-tune on n samples drawn from
    the split's training side, score the final model on its test side; median SRCC/PLCC over splits.

    The final epoch is scored: no model is selected on the test side.
    """
    rows = load_rows(cfg.data)
    splits = repeated_splits(rows, cfg.fewshot.repeats, cfg.finetune.seed, cfg.finetune.train_fraction)
    results: dict[int, dict[str, float]] = {}
    for n in cfg.fewshot.sizes:
        per_split = []
        for i, split in enumerate(splits):
            if len(split.train) < n:
                raise ValueError(f"fewshot.sizes: {n} samples asked but split {i} has {len(split.train)} training rows")
            chosen = random.Random(f"{split.seed}/{n}").sample(split.train, n)
            run = replace_run(cfg, f"{cfg.run.name}-n{n}-split{i}")
            final = finetune_grmp(run, _normalized(chosen), _normalized(split.test)).history[-1]
            per_split.append({"srcc": final["srcc"], "plcc": final["plcc"]})
        results[n] = median_over_repeats(per_split)
        log.info("few-shot n=%d: median over %d splits %s", n, len(splits), results[n])
    return results


def main_grmp(config_path: str | None, overrides: Sequence[str] = ()) -> int:
    """`rayiqa train grmp CONFIG [key=value ...]`: meta-pretrain and print the per-epoch zero-shot SRCC."""
    from rayiqa.config import load_config

    result = pretrain_grmp(load_config(GRMPTrainConfig, config_path, list(overrides)))
    for metrics in result.history:
        print(f"epoch {metrics['epoch']:3d}  zero-shot SRCC {metrics['zero_shot_srcc']:+.4f}  "
              f"PLCC {metrics['zero_shot_plcc']:+.4f}")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def main_grmp_finetune(config_path: str | None, overrides: Sequence[str] = ()) -> int:
    """`rayiqa train grmp-finetune CONFIG [key=value ...]`: QGR fine-tuning, or the few-shot table."""
    from rayiqa.config import load_config

    cfg = load_config(GRMPFinetuneConfig, config_path, list(overrides))
    if cfg.mode == "fewshot":
        for n, scores in fewshot_grmp(cfg).items():
            print(f"n={n:4d}  median SRCC {scores['srcc']:+.4f}  PLCC {scores['plcc']:+.4f}  "
                  f"({cfg.fewshot.repeats} splits)")
        return 0
    result = finetune_grmp(cfg)
    for metrics in result.history:
        angle = f"  mean angle {np.mean(metrics['angle_deg']):6.2f} deg" if "angle_deg" in metrics else ""
        print(f"epoch {metrics['epoch']:3d}  SRCC {metrics['srcc']:+.4f}  PLCC {metrics['plcc']:+.4f}{angle}")
    print(f"checkpoint: {result.checkpoint}")
    return 0
