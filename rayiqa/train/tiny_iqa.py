"""Teach a small Qwen2.5-VL rayiqa's quality prompts on Ray Train (TorchTrainer, DDP over gloo/NCCL).

Rows are made by Ray Data tasks: a random crop of a packaged photograph (never a bundled sample)
and two versions of it, each distorted at a random strength or left pristine, labelled by SSIM
against the crop (rayiqa.data.photos). Each step asks every row one question drawn from the prompt
families (rayiqa.methods.level_targets) and minimises the soft-label cross-entropy of the softmax
over the level tokens at the last prompt position: the very read-out of the scoring engines, through
the same `TransformersEngine.encode` (chat template, processor with the configured pixel bounds).
Each epoch ends with a checkpoint that is itself a loadable Hugging Face folder (plus the optimiser
state); a rerun with the same storage_path + name, or a Ray Train retry, resumes from the latest.
"""
from __future__ import annotations

import logging
import math
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch

from rayiqa.config import MLLMConfig, load_config
from rayiqa.config.tiny_iqa import TinyIQATrainConfig, TinyShapeConfig
from rayiqa.data.photos import decode_png, holdout_set, make_example
from rayiqa.methods import llm_tta, study_prompts
from rayiqa.methods.level_targets import FAMILIES, draw_question
from rayiqa.methods.llm_iqa import level_score, standard_prompt
from rayiqa.methods.metrics import plcc, srcc
from rayiqa.models.mllm.base import LevelRequest
from rayiqa.runtime import ensure_ray
from rayiqa.train.skeleton import (TRAIN_STATE_FILE, fit, load_train_state, report, resume_folder, run_config,
                                   save_train_state)

log = logging.getLogger(__name__)


def build_initial_model(shape: TinyShapeConfig, seed: int, folder: Path) -> Path:
    """The `tiny` preset's config, tokenizer and processor at `shape`, random weights from `seed`."""
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from rayiqa.models.mllm.tiny import tiny_checkpoint_dir

    tiny = tiny_checkpoint_dir()
    config = AutoConfig.from_pretrained(tiny)
    config.text_config.update({
        "hidden_size": shape.hidden_size, "intermediate_size": 2 * shape.hidden_size,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.hidden_size // 32,
        "layer_types": ["full_attention"] * shape.layers,
    })
    config.vision_config.update({
        "hidden_size": shape.vision_hidden_size, "intermediate_size": 2 * shape.vision_hidden_size,
        "depth": shape.vision_depth, "num_heads": shape.vision_hidden_size // 32,
        "out_hidden_size": shape.hidden_size, "fullatt_block_indexes": [shape.vision_depth - 1],
    })
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).save_pretrained(folder)
    AutoProcessor.from_pretrained(tiny).save_pretrained(folder)
    return folder


def make_rows(batch: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, list]:
    """Ray Data task: the training rows whose ids are in this batch (each seeded by (seed, id))."""
    c = TinyIQATrainConfig.model_validate(cfg)
    d = c.data
    rows = [make_example(d.train_photos, d.types, d.side_range, d.p_pristine, d.ssim_floor, [c.seed, int(i)])
            for i in batch["id"]]
    return {key: [r[key] for r in rows] for key in rows[0]}


def _engine(folder: str | Path, cfg: TinyIQATrainConfig) -> Any:
    from rayiqa.models.mllm.transformers_engine import TransformersEngine

    return TransformersEngine(MLLMConfig(preset=str(folder), device="cpu", dtype="float32",
                                         min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, batch_size=16))


def level_loss(logits: torch.Tensor, level_ids: list[list[int]], targets: list[np.ndarray]) -> torch.Tensor:
    """Mean soft-label cross-entropy of each row's softmax over its own level tokens."""
    losses = [-(torch.as_tensor(t, dtype=logits.dtype) * torch.log_softmax(logits[i, ids], dim=-1)).sum()
              for i, (ids, t) in enumerate(zip(level_ids, targets))]
    return torch.stack(losses).mean()


def _questions(batch: dict[str, np.ndarray], cfg: TinyIQATrainConfig, rng: np.random.Generator) -> tuple[list, list]:
    weights = np.array([getattr(cfg.prompts, f) for f in FAMILIES], dtype=float)
    requests, targets = [], []
    for i in range(len(batch["q_a"])):
        family = FAMILIES[int(rng.choice(len(FAMILIES), p=weights / weights.sum()))]
        question = draw_question(family, (float(batch["q_a"][i]), float(batch["q_b"][i])), True,
                                 cfg.data.tie_margin, rng)
        images = [batch["image_a"][i], batch["image_b"][i], batch["pristine"][i]]
        requests.append(LevelRequest(question.prompt, [decode_png(images[j]) for j in question.images]))
        targets.append(question.target)
    return requests, targets


def validate(engine: Any, holdout: list[dict]) -> dict[str, float]:
    """SRCC/PLCC against SSIM on the held-out photos: LLM-IQA K=7 per distortion type and pooled;
    pooled SRCC of LLM-TTA's p(good) and of the study's single-stimulus NR score."""
    images = [r["image"] for r in holdout]
    label = np.array([r["ssim"] for r in holdout])
    kinds = np.array([r["type"] for r in holdout])
    k7 = standard_prompt(7)
    scores = {
        "llm_iqa": level_score(engine.level_probs([LevelRequest(k7, [im]) for im in images]), k7.level_values()),
        "tta_good_poor": engine.level_probs([LevelRequest(llm_tta.prompt2(), [im]) for im in images])[:, 0],
        "study_single": engine.level_probs([LevelRequest(study_prompts.answer_prompt("single", "standard", "nr", 1), [im])
                                            for im in images]) @ np.asarray(study_prompts.SINGLE_VALUES),
    }
    metrics = {f"val/{name}/srcc": srcc(s, label) for name, s in scores.items()}
    metrics["val/llm_iqa/plcc"] = plcc(scores["llm_iqa"], label)
    for kind in sorted(set(kinds) - {"none"}):
        keep = (kinds == kind) | (kinds == "none")
        metrics[f"val/llm_iqa/{kind}/srcc"] = srcc(scores["llm_iqa"][keep], label[keep])
        metrics[f"val/llm_iqa/{kind}/plcc"] = plcc(scores["llm_iqa"][keep], label[keep])
    return metrics


def save_checkpoint(model: Any, processor: Any, optimizer: Any, scheduler: Any, progress: dict, folder: Path) -> None:
    """A loadable Hugging Face folder (model + processor) plus the optimiser, scheduler and progress."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    save_train_state(folder, optimizer, scheduler, **progress)


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: a question per row, soft-label CE on level tokens, a checkpoint per epoch."""
    cfg = TinyIQATrainConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.threads_per_worker)
    rank = ray.train.get_context().get_world_rank()
    with resume_folder() as folder:
        engine = _engine(folder or config["initial"], cfg)
        state = load_train_state(folder) if folder is not None else None
    model = engine.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(cfg.data.rows / cfg.num_workers / cfg.batch_size)
    total = cfg.epochs * min(per_epoch, cfg.max_steps_per_epoch or per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps))
                                                  * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start_epoch, step = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
    resumed_from_step = step
    ddp = ray.train.torch.prepare_model(model)
    holdout = holdout_set(cfg.data.holdout_photos, cfg.data.types, cfg.data.holdout_levels,
                          cfg.data.holdout_long_side, cfg.seed) if rank == 0 and cfg.holdout_eval else []
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, rank, epoch])
        losses = []
        batches = shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                     local_shuffle_buffer_size=4 * cfg.batch_size, local_shuffle_seed=cfg.seed + epoch)
        for i, batch in enumerate(batches):
            if cfg.max_steps_per_epoch is not None and i >= cfg.max_steps_per_epoch:
                break
            requests, targets = _questions(batch, cfg, rng)
            inputs, texts = engine.encode(requests)
            level_ids = [engine.level_ids(t, r.prompt.levels) for t, r in zip(texts, requests)]
            loss = level_loss(ddp(**inputs, logits_to_keep=1).logits[:, -1, :], level_ids, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if rank == 0 and step % 50 == 0:
                log.info("epoch %d step %d loss %.4f (last 50: %.4f)", epoch + 1, step, losses[-1], np.mean(losses[-50:]))
        metrics: dict[str, Any] = {"epoch": epoch + 1, "step": step, "resumed_from_step": resumed_from_step,
                                   "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                   "lr": scheduler.get_last_lr()[0]}
        if holdout:
            model.eval()
            metrics |= validate(engine, holdout)
            model.train()
        report(metrics, partial(save_checkpoint, model, engine.processor, optimizer, scheduler, {"epoch": epoch + 1, "step": step}))


def train_tiny_iqa(cfg: TinyIQATrainConfig) -> ray.train.Result:
    """Make the rows (Ray Data tasks, kept in the object store across epochs), run the TorchTrainer."""
    ensure_ray(cfg.ray)
    run_dir = Path(cfg.storage_path).resolve() / cfg.name
    initial = run_dir / "initial-model"  # written on the driver: transformers saves only on rank 0 under DDP
    if not (initial / "config.json").exists():
        build_initial_model(cfg.model, cfg.seed, initial)
    rows = ray.data.range(cfg.data.rows, override_num_blocks=4 * cfg.num_workers).map_batches(
        make_rows, fn_kwargs={"cfg": cfg.model_dump()}, batch_size=32, num_cpus=cfg.loader_cpus,
    ).materialize()
    run = run_config(cfg.name, str(run_dir.parent), cfg.max_failures, cfg.keep_checkpoints)
    return fit(train_loop, {"cfg": cfg.model_dump(), "initial": str(initial)}, run,
               num_workers=cfg.num_workers, cpus_per_worker=cfg.cpus_per_worker, datasets={"train": rows})


def export(checkpoint: ray.train.Checkpoint, export_dir: str | Path) -> Path:
    """The checkpoint's Hugging Face files (no optimiser state) as a plain model folder."""
    out = Path(export_dir)
    with checkpoint.as_directory() as folder:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(folder, out, ignore=shutil.ignore_patterns(TRAIN_STATE_FILE))
    return out


def summarize(result: ray.train.Result, exported: Path | None) -> str:
    """One screen: epochs, steps, loss, held-out SRCC/PLCC, where the checkpoint and the model are."""
    m = result.metrics or {}
    lines = [f"tiny-iqa training: epoch {m.get('epoch')} step {m.get('step')} train_loss {m.get('train_loss', float('nan')):.4f}"]
    for key in sorted(k for k in m if k.startswith("val/")):
        lines.append(f"  {key:<40} {m[key]:+.4f}")
    lines.append(f"checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    lines.append(f"model folder: {exported}")
    return "\n".join(lines)


def main_train_tiny_iqa(config_path: str | None, overrides: list[str]) -> int:
    """`rayiqa train tiny-iqa CONFIG [key=value ...]`."""
    cfg = load_config(TinyIQATrainConfig, config_path, overrides)
    result = train_tiny_iqa(cfg)
    exported = export(result.checkpoint, cfg.export_dir) if result.checkpoint and cfg.export_dir else None
    print(summarize(result, exported))
    return 0 if result.error is None else 1
