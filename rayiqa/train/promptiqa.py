"""PromptIQA mixed-dataset training on Ray Train (TorchTrainer, DDP) with in-batch prompting.

The driver loads every configured registry dataset, splits and min-max normalises it (Sec. 4.1 C),
and cuts each training split into episodes of `batch_size` images of one dataset (one requirement;
each image is prompted by the others). Episodes of all datasets are shuffled together into one Ray
Dataset that every worker streams its shard of. Each epoch ends with a checkpoint (model, optimiser,
scheduler, epoch, step) in the run's storage and validation SRCC/PLCC per dataset; a rerun with the
same storage_path + name, or a Ray Train retry after a worker failure, resumes from the latest one
(`rayiqa.train.skeleton`).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import ray
import ray.train
import torch

from rayiqa.config import StorageConfig, load_config
from rayiqa.config.promptiqa import DatasetSpec, PromptIQATrainConfig
from rayiqa.data import DatasetError, load_dataset, normalize_split, split_rows
from rayiqa.data.rows import IQARow
from rayiqa.data.splits import Split
from rayiqa.methods.metrics import plcc, srcc
from rayiqa.methods.prompt_iqa import InBatchPromptIQA, in_batch_loss, sample_ispp, score_with_ispp
from rayiqa.models.promptiqa import PromptIQA, load_promptiqa, save_promptiqa
from rayiqa.runtime import ensure_ray
from rayiqa.train.episodes import load_episode, load_images
from rayiqa.train.skeleton import fit, load_train_state, report, resume_folder, run_config, save_train_state
from rayiqa.train.synthetic_sets import ensure_synthetic_set

log = logging.getLogger(__name__)


def prepare_synthetic(cfg: PromptIQATrainConfig) -> None:
    """Build each `synthetic` dataset root (local or s3://) that has no annotations yet from `cfg.synthetic.pristine`."""
    src = cfg.synthetic
    roots = {d.root for d in cfg.datasets if d.name == "synthetic"} if src.make else set()
    for root in sorted(roots):
        ensure_synthetic_set(root, src.pristine, src.types, src.levels, src.seed, cfg.storage)


def load_splits(cfg: PromptIQATrainConfig) -> dict[str, Split]:
    """Each dataset's normalised train/test split (by reference where it has references), keyed by DatasetSpec.key."""
    splits = {}
    for spec in cfg.datasets:
        options = {"label": spec.label} if spec.label else {}
        rows = load_dataset(spec.name, spec.root, cfg.storage, **options)
        splits[spec.key] = normalize_split(split_rows(rows, spec.train_fraction, cfg.seed))
    return splits


def make_episodes(splits: dict[str, Split], batch_size: int, seed: int) -> list[dict[str, Any]]:
    """Train rows cut into same-dataset episodes of `batch_size`, all datasets shuffled together."""
    rng = np.random.default_rng(seed)
    episodes = []
    for key, split in splits.items():
        if len(split.train) < batch_size:
            raise DatasetError(f"{key}: {len(split.train)} training images < batch_size {batch_size}")
        order = rng.permutation(len(split.train))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = [split.train[i] for i in order[start:start + batch_size]]
            episodes.append({"dataset": key, "images": [r.image for r in rows], "scores": [r.score for r in rows]})
    return [episodes[i] for i in rng.permutation(len(episodes))]


def validation_sets(splits: dict[str, Split], k: int, strategy: str, seed: int) -> dict[str, dict[str, list]]:
    """Per dataset: its test images and scores, and a fixed ISPP sampled from its training split (Sec. 4.1 C)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, split in splits.items():
        train: list[IQARow] = split.train
        picks = sample_ispp(np.array([r.score for r in train]), k, strategy, rng)
        out[key] = {
            "images": [r.image for r in split.test], "scores": [r.score for r in split.test],
            "ispp_images": [train[i].image for i in picks], "ispp_scores": [train[i].score for i in picks],
        }
    return out


def validate(model: PromptIQA, sets: dict[str, dict[str, list]], storage: StorageConfig) -> dict[str, float]:
    """SRCC and PLCC per dataset of the model's scores under that dataset's fixed ISPP."""
    size = model.cfg.image_size
    metrics = {}
    for key, s in sets.items():
        pred = score_with_ispp(
            model, torch.from_numpy(load_images(s["images"], storage, size)),
            torch.from_numpy(load_images(s["ispp_images"], storage, size)),
            torch.tensor(s["ispp_scores"]),
        ).numpy()
        metrics[f"val/{key}/srcc"], metrics[f"val/{key}/plcc"] = srcc(pred, s["scores"]), plcc(pred, s["scores"])
    return metrics


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: stream episodes of its shard, L1 on in-batch predictions after RS/RF, report per epoch.

    Every report carries `resumed_from_step`, the step this attempt started from (0: fresh), so a
    Ray Train retry after a worker failure shows in the metrics where it resumed.
    """
    cfg = PromptIQATrainConfig.model_validate(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    with resume_folder() as folder:
        model = PromptIQA(cfg.model) if folder is None else load_promptiqa(str(folder), cfg.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.optim.cosine_epochs)
        progress = {"epoch": 0, "step": 0} if folder is None else load_train_state(folder, optimizer, scheduler)
    start_epoch, step = progress["epoch"], progress["step"]
    resumed_from_step = step  # 0 on a fresh start; after a worker failure, the checkpoint's step
    trained = ray.train.torch.prepare_model(InBatchPromptIQA(model))
    shard = ray.train.get_dataset_shard("train")
    aug = cfg.augment
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, rank, epoch])
        trained.train()
        losses = []
        for i, batch in enumerate(shard.iter_batches(batch_size=1, batch_format="numpy")):
            if cfg.max_steps_per_epoch is not None and i >= cfg.max_steps_per_epoch:
                break
            images, scores = torch.tensor(batch["pixels"][0]), torch.tensor(batch["scores"][0])
            loss, _, _ = in_batch_loss(trained, images, scores, rng, aug.p_scale, aug.p_flip, aug.alpha, aug.scaling)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        scheduler.step()
        metrics: dict[str, Any] = {"epoch": epoch + 1, "step": step, "resumed_from_step": resumed_from_step,
                                   "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                   "lr": scheduler.get_last_lr()[0]}
        if rank == 0:
            model.eval()
            metrics |= validate(model, config["val"], cfg.storage)

        def save(folder, epoch=epoch + 1, step=step):
            save_promptiqa(model, folder)
            save_train_state(folder, optimizer, scheduler, epoch=epoch, step=step)

        report(metrics, save)


def train_promptiqa(cfg: PromptIQATrainConfig) -> ray.train.Result:
    """Build the mixed episode dataset and validation sets, run the TorchTrainer, return its Result."""
    ensure_ray(cfg.ray)
    prepare_synthetic(cfg)
    splits = load_splits(cfg)
    episodes = make_episodes(splits, cfg.batch_size, cfg.seed)
    train = ray.data.from_items(episodes).map(
        load_episode, fn_kwargs={"storage": cfg.storage.model_dump(), "size": cfg.model.image_size},
        num_cpus=cfg.loader_cpus, compute=ray.data.TaskPoolStrategy(size=cfg.loader_tasks),
    )
    return fit(
        train_loop,
        {"cfg": cfg.model_dump(), "val": validation_sets(splits, cfg.ispp_size, cfg.ispp_sampling, cfg.seed)},
        run_config(cfg.name, cfg.storage_path, cfg.max_failures, cfg.keep_checkpoints, cfg.storage),
        num_workers=cfg.num_workers, cpus_per_worker=cfg.cpus_per_worker, use_gpu=cfg.use_gpu, datasets={"train": train},
    )


def summarize(result: ray.train.Result, datasets: list[DatasetSpec]) -> str:
    """One screen: epochs, steps, validation SRCC/PLCC per dataset, where the checkpoint is."""
    m = result.metrics or {}
    lines = [f"PromptIQA training: epoch {m.get('epoch')} step {m.get('step')} train_loss {m.get('train_loss', float('nan')):.4f}"]
    for spec in datasets:
        lines.append(f"  {spec.key:<24} SRCC {m.get(f'val/{spec.key}/srcc', float('nan')):+.4f}"
                     f"  PLCC {m.get(f'val/{spec.key}/plcc', float('nan')):+.4f}")
    lines.append(f"checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    return "\n".join(lines)


def main_train_promptiqa(config_path: str | None, overrides: list[str]) -> int:
    """`rayiqa train promptiqa CONFIG [key=value ...]`."""
    cfg = load_config(PromptIQATrainConfig, config_path, overrides)
    if cfg.model.encoder == "tiny" and cfg.model.checkpoint is None:
        log.warning("weights: random-init tiny encoder; scores from this run are not quality estimates")
    result = train_promptiqa(cfg)
    print(summarize(result, cfg.datasets))
    return 0 if result.error is None else 1

