"""Teach a small Qwen2.5-VL rayiqa's quality prompts on Ray Train (TorchTrainer, DDP over gloo/NCCL).

Rows are made by Ray Data tasks: a random crop of a packaged photograph (never a bundled sample) or a
dead-leaves image, and distorted copies of it at random strengths, labelled by GMSD against it, per
image and per merged vision token (rayiqa.data.photos). Training has two phases over one run:

- vision epochs teach the vision tower alone to see distortions: a linear head on each merged token
  regresses that token's local label, the mean of those predictions ranks the copies of one row
  (pairwise logistic loss on the image labels), and a linear head on the pooled tokens names the
  distortion type. The heads exist only in training (their state rides in the checkpoint's train state).
- prompt epochs freeze the tower's patch embedding and blocks and teach the merger and the language
  model rayiqa's prompts: each row is asked one question drawn from the prompt families
  (rayiqa.methods.level_targets), with the soft-label cross-entropy of the softmax over the level
  tokens at the last prompt position, the very read-out of the scoring engines, through the same
  `TransformersEngine.encode` (chat template, processor with the configured pixel bounds).

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
from rayiqa.config.tiny_iqa import TinyIQATrainConfig, TinyShapeConfig, VisionPhaseConfig
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


def dct_patch_embedding(weight: torch.Tensor, colour: int = 6) -> None:
    """Set a Conv3d patch embedding (hidden, 3, T, P, P) to a DCT basis: luma basis functions evenly
    spread over the frequencies (low to high, each scaled by 1 + |f| so fine detail is not drowned by
    the patch mean), plus `colour` colour-opponent low frequencies. A random init would have to
    discover these directions itself; with them, noise, blur and blocking are visible from step 0."""
    n = weight.shape[-1]
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    basis[0] /= np.sqrt(2)
    freqs = sorted(((u, v) for u in range(n) for v in range(n)), key=lambda f: (f[0] + f[1], f[0]))
    luma = weight.shape[0] - colour
    with torch.no_grad():
        weight.zero_()
        for o in range(luma):
            u, v = freqs[round(o * (len(freqs) - 1) / max(1, luma - 1))]
            gain = 0.1 if (u, v) == (0, 0) else 1 + np.hypot(u, v)
            weight[o] = torch.tensor(np.outer(basis[u], basis[v]) * gain / (3 * weight.shape[2]), dtype=weight.dtype)
        for o in range(colour):
            u, v = [(0, 0), (0, 1), (1, 0)][o // 2 % 3]
            f = torch.tensor(np.outer(basis[u], basis[v]) / weight.shape[2], dtype=weight.dtype)
            weight[luma + o, 2 * (o % 2)] = f  # red (even) or blue (odd) against green
            weight[luma + o, 1] = -f


def build_initial_model(shape: TinyShapeConfig, seed: int, folder: Path) -> Path:
    """The `tiny` preset's config, tokenizer and processor at `shape`, random weights from `seed`, the
    patch embedding set to a DCT basis (`shape.patch_init`) and nearest-neighbour resizing in the
    processor: its resize to whole merged tokens then keeps the pixels' noise and sharpness as they are."""
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
        "patch_size": shape.patch_size, "window_size": 4 * shape.grid,  # windows of 4 x 4 merged tokens
    })
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    if shape.patch_init == "dct":
        dct_patch_embedding(model.model.visual.patch_embed.proj.weight)
    model.save_pretrained(folder)
    processor = AutoProcessor.from_pretrained(tiny)
    processor.image_processor.resample = 0  # PIL.Image.Resampling.NEAREST
    processor.image_processor.patch_size = shape.patch_size
    processor.save_pretrained(folder)
    return folder


def make_rows(batch: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, list]:
    """Ray Data task: the training rows whose ids are in this batch (each seeded by (seed, id))."""
    c = TinyIQATrainConfig.model_validate(cfg)
    d = c.data
    rows = [make_example(d.train_photos, d.type_mix(), d.side_range, d.dead_leaves, d.defocus, d.off_grid, d.versions,
                         d.gmsd_ceiling, c.model.grid, [c.seed, int(i)]) for i in batch["id"]]
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
    """One question per row about two of its images (either may be the pristine one), the pristine as reference."""
    weights = np.array([getattr(cfg.prompts, f) for f in FAMILIES], dtype=float)
    requests, targets = [], []
    for i in range(len(batch["q"])):
        family = FAMILIES[int(rng.choice(len(FAMILIES), p=weights / weights.sum()))]
        a, b = rng.choice(len(batch["q"][i]), size=2, replace=False)
        question = draw_question(family, (float(batch["q"][i][a]), float(batch["q"][i][b])), True,
                                 cfg.data.tie_margin, rng)
        images = [batch["images"][i][a], batch["images"][i][b], batch["images"][i][0]]
        requests.append(LevelRequest(question.prompt, [decode_png(images[j]) for j in question.images]))
        targets.append(question.target)
    return requests, targets


class VisionObjective(torch.nn.Module):
    """The vision tower with its training heads: a local-quality logit per merged token and distortion-type
    logits from the mean token (the language model is not involved)."""

    def __init__(self, visual: torch.nn.Module, n_types: int) -> None:
        super().__init__()
        width = visual.merger.mlp[-1].out_features
        self.visual, self.token_head, self.type_head = visual, torch.nn.Linear(width, 1), torch.nn.Linear(width, n_types)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        tokens = self.visual(pixel_values, grid_thw=grid_thw).pooler_output
        per_image = torch.split(tokens, (grid_thw.prod(-1) // 4).tolist())
        return ([self.token_head(t)[:, 0] for t in per_image],
                self.type_head(torch.stack([t.mean(0) for t in per_image])))


def image_logit(token_logits: torch.Tensor) -> torch.Tensor:
    """An image's quality logit: the logit of its tokens' mean predicted local quality."""
    return torch.logit(torch.sigmoid(token_logits).mean(), eps=1e-4)


def vision_loss(token_logits: list[torch.Tensor], type_logits: torch.Tensor, qmaps: list[torch.Tensor],
                q: torch.Tensor, types: torch.Tensor, group: int, w: VisionPhaseConfig) -> tuple[torch.Tensor, dict]:
    """Local-quality MSE per token + pairwise logistic ranking of each row's images (same content) and of all
    the batch's images (across content: one scale for every photograph) + type cross-entropy."""
    local = torch.stack([((torch.sigmoid(t) - m) ** 2).mean() for t, m in zip(token_logits, qmaps)]).mean()
    s = torch.stack([image_logit(t) for t in token_logits])
    rank = pairwise_rank(s.view(-1, group), q.view(-1, group), w.rank_margin)
    batch_rank = pairwise_rank(s.view(1, -1), q.view(1, -1), w.rank_margin)
    kind = torch.nn.functional.cross_entropy(type_logits, types)
    loss = w.local_weight * local + w.rank_weight * rank + w.batch_rank_weight * batch_rank + w.type_weight * kind
    return loss, {"local": local.item(), "rank": rank.item(), "batch_rank": batch_rank.item(), "type": kind.item()}


def pairwise_rank(s: torch.Tensor, q: torch.Tensor, margin: float) -> torch.Tensor:
    """Pairwise logistic ranking loss within each row of (groups, n) scores `s` by their labels `q`;
    pairs whose labels differ by `margin` or less are not ranked."""
    dq, ds = q[:, :, None] - q[:, None, :], s[:, :, None] - s[:, None, :]
    ordered = dq.abs() > margin
    return torch.nn.functional.softplus(-torch.sign(dq) * ds)[ordered].mean() if ordered.any() else s.sum() * 0


def _vision_batch(batch: dict[str, np.ndarray], types: list[str], rng: np.random.Generator) -> tuple:
    """Every image of every row, each row turned by one random multiple of 90 degrees and flip, with its
    local-quality map turned alike, its image label and type index."""
    images, qmaps = [], []
    for row_images, row_maps, (h, w) in zip(batch["images"], batch["qmaps"], batch["grid_hw"]):
        turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        for data, qmap in zip(row_images, row_maps):
            pair = [decode_png(data), np.frombuffer(qmap, np.float32).reshape(int(h), int(w))]
            pair = [np.rot90(x, turns) for x in pair]
            pair = [np.ascontiguousarray(x[:, ::-1] if flip else x) for x in pair]
            images.append(pair[0])
            qmaps.append(torch.from_numpy(pair[1].copy()).flatten())
    q = torch.tensor(np.concatenate([np.asarray(r, dtype=np.float32) for r in batch["q"]]))
    kinds = torch.tensor([(["none", *types]).index(t) for r in batch["types"] for t in r])
    return images, qmaps, q, kinds


def validate_vision(objective: VisionObjective, processor: Any, holdout: list[dict]) -> dict[str, float]:
    """SRCC of the tower's image logit against SSIM and against the distortion level, on the held-out photos."""
    with torch.no_grad():
        scores = []
        for i in range(0, len(holdout), 8):
            inputs = processor(images=[r["image"] for r in holdout[i : i + 8]], return_tensors="pt")
            scores += [image_logit(t).item() for t in objective(inputs["pixel_values"], inputs["image_grid_thw"])[0]]
    return {"val/vision/srcc": srcc(np.array(scores), np.array([r["ssim"] for r in holdout])),
            "val/vision/level_srcc": srcc(np.array(scores), -np.array([r["level"] for r in holdout]))}


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
    metrics["val/llm_iqa/level_srcc"] = srcc(scores["llm_iqa"], -np.array([r["level"] for r in holdout]))
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


def _phase(cfg: TinyIQATrainConfig, epoch: int) -> str:
    return "vision" if epoch < cfg.vision.epochs else "prompts"


def _trainable(model: Any, phase: str) -> list[torch.nn.Parameter]:
    """Vision phase: the tower; prompt phase: everything but the tower's patch embedding and blocks."""
    visual = model.model.visual
    frozen = set() if phase == "vision" else {id(p) for m in (visual.patch_embed, visual.blocks) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return [p for p in (visual.parameters() if phase == "vision" else model.parameters()) if p.requires_grad]


def _schedule(optimizer: Any, warmup: int, total: int) -> Any:
    """Linear warm-up, then cosine decay to 0 at step `total`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup))
                                             * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker, one phase: the epochs from the latest checkpoint's up to `until` (the end of its
    phase), with that phase's parameters, optimiser and schedule (see the module docstring); a checkpoint per epoch."""
    cfg = TinyIQATrainConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.threads_per_worker)
    rank = ray.train.get_context().get_world_rank()
    with resume_folder() as folder:
        engine = _engine(folder or config["initial"], cfg)
        state = load_train_state(folder) if folder is not None else {"epoch": 0, "step": 0}
    model = engine.model.train()
    objective = VisionObjective(model.model.visual, 1 + len(cfg.data.types))
    if "heads" in state:
        objective.load_state_dict(state["heads"], strict=False)
    per_epoch = math.ceil(cfg.data.rows / cfg.num_workers / cfg.batch_size)
    steps = min(per_epoch, cfg.max_steps_per_epoch or per_epoch)
    holdout = holdout_set(cfg.data.holdout_photos, cfg.data.types, cfg.data.holdout_levels,
                          cfg.data.holdout_long_side, cfg.seed) if rank == 0 and cfg.holdout_eval else []
    step, resumed_from_step, phase = state["step"], state["step"], _phase(cfg, state["epoch"])
    lr, epochs = (cfg.vision.lr, cfg.vision.epochs) if phase == "vision" else (cfg.lr, cfg.epochs)
    heads = [*objective.token_head.parameters(), *objective.type_head.parameters()] if phase == "vision" else []
    optimizer = torch.optim.AdamW(_trainable(model, phase) + heads, lr=lr, weight_decay=cfg.weight_decay)
    scheduler = _schedule(optimizer, cfg.warmup_steps, epochs * steps)
    if state.get("phase") == phase:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    ddp = ray.train.torch.prepare_model(objective if phase == "vision" else model)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(state["epoch"], config["until"]):
        rng = np.random.default_rng([cfg.seed, rank, epoch])
        losses: list[float] = []
        parts: list[dict] = []
        batches = shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                     local_shuffle_buffer_size=4 * cfg.batch_size, local_shuffle_seed=cfg.seed + epoch)
        for i, batch in enumerate(batches):
            if i >= steps:
                break
            if phase == "vision":
                images, qmaps, q, kinds = _vision_batch(batch, cfg.data.types, rng)
                inputs = engine.processor.image_processor(images=images, return_tensors="pt")
                token_logits, type_logits = ddp(inputs["pixel_values"], inputs["image_grid_thw"])
                loss, part = vision_loss(token_logits, type_logits, qmaps, q, kinds, 1 + cfg.data.versions, cfg.vision)
                parts.append(part)
            else:
                requests, targets = _questions(batch, cfg, rng)
                inputs, texts = engine.encode(requests)
                level_ids = [engine.level_ids(t, r.prompt.levels) for t, r in zip(texts, requests)]
                loss = level_loss(ddp(**inputs, logits_to_keep=1).logits[:, -1, :], level_ids, targets)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.clip_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if rank == 0 and step % 50 == 0:
                log.info("%s epoch %d step %d loss %.4f (last 50: %.4f)", phase, epoch + 1, step, losses[-1],
                         np.mean(losses[-50:]))
        metrics: dict[str, Any] = {"epoch": epoch + 1, "step": step, "phase": phase, "resumed_from_step": resumed_from_step,
                                   "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                   "lr": scheduler.get_last_lr()[0]}
        metrics |= {f"train/{k}": float(np.mean([p[k] for p in parts])) for k in (parts[0] if parts else {})}
        if holdout:
            model.eval()
            metrics |= (validate_vision(objective, engine.processor.image_processor, holdout) if phase == "vision"
                        else validate(engine, holdout))
            model.train()
        progress = {"epoch": epoch + 1, "step": step, "phase": phase,
                    "heads": {k: v for k, v in objective.state_dict().items() if not k.startswith("visual.")}}
        report(metrics, partial(save_checkpoint, model, engine.processor, optimizer, scheduler, progress))


def train_tiny_iqa(cfg: TinyIQATrainConfig) -> ray.train.Result:
    """Make the rows (Ray Data tasks, kept in the object store across epochs), then run the TorchTrainer once
    per phase; each run starts from the run's latest checkpoint, so a phase already done is skipped."""
    ensure_ray(cfg.ray)
    run_dir = Path(cfg.storage_path).resolve() / cfg.name
    initial = run_dir / "initial-model"  # written on the driver: transformers saves only on rank 0 under DDP
    if not (initial / "config.json").exists():
        build_initial_model(cfg.model, cfg.seed, initial)
    rows = ray.data.range(cfg.data.rows, override_num_blocks=4 * cfg.num_workers).map_batches(
        make_rows, fn_kwargs={"cfg": cfg.model_dump()}, batch_size=32, num_cpus=cfg.loader_cpus,
    ).materialize()
    run = run_config(cfg.name, str(run_dir.parent), cfg.max_failures, cfg.keep_checkpoints)
    for until in sorted({cfg.vision.epochs, cfg.vision.epochs + cfg.epochs} - {0}):  # one TorchTrainer run per phase
        result = fit(train_loop, {"cfg": cfg.model_dump(), "initial": str(initial), "until": until}, run,
                     num_workers=cfg.num_workers, cpus_per_worker=cfg.cpus_per_worker, datasets={"train": rows})
        if result.error is not None:
            break
    return result


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
