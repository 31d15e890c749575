"""PromptIQA's Tables 3 and 5 in miniature: does a small PromptIQA follow a new requirement stated by its ISPP?

Pristine images (scikit-image's bundled photos, shrunk) are distorted with `make_synthetic_set` and
labelled by full-reference metrics; each label column is one assessment requirement. A small
PromptIQA (in-batch prompting, RS/RF) and a plain regressor (same encoder and regressor, no prompt:
the paper's "w/o prompt") are trained on the same mixed batches of the training requirements
(one MOS-like, one DMOS-like), on the training references only. Both are then tested on unseen
references under every requirement, including held-out ones (MOS-like and its DMOS-like inversion);
PromptIQA gets a 10-ISP prompt interval-sampled from that requirement's training references. The
last row is Table 5's inversion: the held-out MOS-like labels scored with the ISPP's scores inverted.

Trained end to end from a random tiny encoder, PromptIQA memorises rather than learns to read its
prompt. `train_miniature` is the staged schedule that does learn it: the encoder is first trained
as a plain regressor on one requirement (it stands in for the paper's pretrained MoNet backbone,
which our random tiny encoder lacks), then frozen, and the prompt path is trained on its cached
features over MOS- and DMOS-like requirements. Its set is blur and noise at 32 px with rank labels
(uniform on each side), so an ISPP's direction shows only in how its scores go with its images,
never in the shape of its score distribution. Its rows: SRCC on unseen references under the ISPP,
under the inverted ISPP (S -> 1 - S), and between the two predictions (about -1: ranking reversed).
Trained in-process with the library's methods (no Ray: this measures the method, not the cluster).

    python benchmarks/promptiqa_requirements.py [--quick]
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import rankdata
from skimage import data as skdata

from rayiqa.config.promptiqa import PromptIQAModelConfig
from rayiqa.data import load_dataset, make_synthetic_set, min_max_normalize, reference_split
from rayiqa.methods.metrics import srcc
from rayiqa.methods.prompt_iqa import (
    InBatchPromptIQA,
    in_batch_loss,
    in_batch_predictions_from_features,
    interval_sampling,
    score_with_ispp,
)
from rayiqa.models.promptiqa import PlainRegressor, PromptIQA, to_batch

PRISTINE = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
            "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "colorwheel")
TRAIN_REQUIREMENTS = ("ssim", "gmsd")  # MOS-like, DMOS-like
HELD_OUT = ("psnr", "psnr_inv")  # a new MOS-like requirement and its DMOS-like inversion
MINIATURE = dict(size=32, levels=6, types=("gaussian_blur", "gaussian_noise"), normalise="rank")
MINIATURE_TRAIN = ("ssim", "ssim_inv", "gmsd", "gmsd_inv")  # the first also pretrains the encoder
MINIATURE_CFG = PromptIQAModelConfig(image_size=32, dim=32, num_heads=2, prompt_depth=2, ispp_depth=2, fusion_depth=4)


def write_pristine(folder: Path, size: int) -> None:
    """scikit-image's bundled photos (no download), RGB, resized to size x size."""
    for name in PRISTINE:
        image = getattr(skdata, name)()
        rgb = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
        Image.fromarray(rgb.astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS).save(folder / f"{name}.png")


def requirement_sets(
    root: str, labels: tuple[str, ...], normalise: str = "minmax"
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """label -> (train idx, train scores, test idx, test scores): same reference split for all.

    Each side is normalised on its own: "minmax" (the paper's) or "rank" (ranks spread evenly on [0, 1]).
    """
    rows = load_dataset("synthetic", root, label="ssim")
    index = {row.image: i for i, row in enumerate(rows)}
    split = reference_split(rows, 0.7, seed=0)
    out = {}
    for label in labels:
        sides = []
        for part in (split.train, split.test):
            relabelled = [replace(r, score=r.labels[label]) for r in part]
            if normalise == "minmax":
                scores = np.array([r.score for r in min_max_normalize(relabelled)], dtype=np.float32)
            else:
                scores = ((rankdata([r.score for r in relabelled]) - 1) / (len(relabelled) - 1)).astype(np.float32)
            sides += [np.array([index[r.image] for r in relabelled]), scores]
        out[label] = tuple(sides)
    return out


def build_set(work: Path, size: int, levels: int, labels: tuple[str, ...], seed: int,
              types: tuple[str, ...] | None = None, normalise: str = "minmax") -> tuple[torch.Tensor, dict]:
    """The pristine photos at `size` px, distorted and labelled under `work`: (image batch, requirement_sets)."""
    pristine, root = work / "pristine", work / "synthetic"
    pristine.mkdir(parents=True)
    write_pristine(pristine, size)
    rows = make_synthetic_set(pristine, root, types=types, levels=levels, seed=seed)
    images = to_batch([np.asarray(Image.open(r.image).convert("RGB")) for r in rows], size)
    return images, requirement_sets(str(root), labels, normalise)


def train(images: torch.Tensor, sets: dict, cfg: PromptIQAModelConfig, steps: int, batch: int, lr: float,
          seed: int) -> tuple[PromptIQA, PlainRegressor]:
    """PromptIQA and the plain regressor on identical mixed batches: each step one training requirement."""
    torch.manual_seed(seed)
    prompt_model, plain = PromptIQA(cfg), PlainRegressor(cfg)
    episodic = InBatchPromptIQA(prompt_model)
    opt_p = torch.optim.Adam(prompt_model.parameters(), lr=lr, weight_decay=1e-5)
    opt_r = torch.optim.Adam(plain.parameters(), lr=lr, weight_decay=1e-5)
    rng = np.random.default_rng(seed)
    prompt_model.train(), plain.train()
    for step in range(steps):
        idx, scores = sets[TRAIN_REQUIREMENTS[step % len(TRAIN_REQUIREMENTS)]][:2]
        pick = rng.choice(len(idx), size=batch, replace=False)
        x, y = images[idx[pick]], torch.from_numpy(scores[pick])
        loss, _, _ = in_batch_loss(episodic, x, y, rng)
        opt_p.zero_grad(), loss.backward(), opt_p.step()
        plain_loss = torch.nn.functional.l1_loss(plain(x), y)
        opt_r.zero_grad(), plain_loss.backward(), opt_r.step()
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"  step {step + 1}/{steps}  PromptIQA L1 {loss.item():.3f}  plain L1 {plain_loss.item():.3f}", flush=True)
    return prompt_model.eval(), plain.eval()


def train_miniature(images: torch.Tensor, sets: dict, cfg: PromptIQAModelConfig, seed: int,
                    requirements: tuple[str, ...] = MINIATURE_TRAIN, pretrain_steps: int = 200, steps: int = 1600,
                    batch: int = 16, lr: float = 1e-3, p_flip: float = 0.5, clip: float = 1.0) -> PromptIQA:
    """The staged schedule: encoder pretrained as a plain regressor, then the prompt path on its frozen features.

    Stage 1 (`pretrain_steps`, on requirements[0]) stands in for the paper's pretrained backbone.
    Stage 2: in-batch prompting with RS/RF (p_flip raised from the paper's 0.1) on cached features,
    each step one requirement in turn; Adam with one-cycle warm-up and cosine decay to ~0, and gradient
    clipping (without them the tiny prompt path collapses late or outputs a constant).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    plain = PlainRegressor(cfg).train()
    opt = torch.optim.Adam(plain.parameters(), lr=lr)
    idx, scores = sets[requirements[0]][:2]
    for _ in range(pretrain_steps):
        pick = rng.choice(len(idx), size=batch, replace=False)
        loss = torch.nn.functional.l1_loss(plain(images[idx[pick]]), torch.from_numpy(scores[pick]))
        opt.zero_grad(), loss.backward(), opt.step()
    model = plain.body.eval()
    with torch.no_grad():
        features = model.encode(images)
    for frozen in (model.encoder, model.project):
        frozen.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    predictor = functools.partial(in_batch_predictions_from_features, model)
    model.train()
    for step in range(steps):
        idx, scores = sets[requirements[step % len(requirements)]][:2]
        pick = rng.choice(len(idx), size=batch, replace=False)
        loss, _, _ = in_batch_loss(predictor, features[idx[pick]], torch.from_numpy(scores[pick]), rng, p_flip=p_flip)
        opt.zero_grad(), loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step(), schedule.step()
    return model.eval()


def reversal(model: PromptIQA, images: torch.Tensor, sets: dict, label: str, k: int = 10) -> tuple[float, float, float]:
    """On the test side of `label`, prompted by k interval-sampled training ISPs: SRCC(pred, labels),
    SRCC(pred under the inverted ISPP 1 - S, labels) and SRCC(pred, inverted pred)."""
    tr_idx, tr_s, te_idx, te_s = sets[label]
    ispp = interval_sampling(tr_s, k)
    pred, inverted = (
        score_with_ispp(model, images[te_idx], images[tr_idx[ispp]], torch.from_numpy(s)).numpy()
        for s in (tr_s[ispp], 1 - tr_s[ispp])
    )
    return srcc(pred, te_s), srcc(inverted, te_s), srcc(pred, inverted)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~2-3 minutes: fewer steps, smaller images")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    size, levels, steps = (48, 4, 400) if args.quick else (64, 5, 1500)
    steps = args.steps or steps
    cfg = PromptIQAModelConfig(image_size=size, dim=32, num_heads=2, prompt_depth=2, ispp_depth=2, fusion_depth=4)
    torch.set_num_threads(2)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        images, sets = build_set(Path(tmp), size, levels, TRAIN_REQUIREMENTS + HELD_OUT, args.seed)
    print(f"{len(images)} images from {len(PRISTINE)} references ({time.perf_counter() - start:.0f} s); training {steps} steps")
    prompt_model, plain = train(images, sets, cfg, steps, batch=11, lr=1e-3, seed=args.seed)

    header = f"{'requirement':<22}{'type':<14}{'PromptIQA':>7}{'plain':>9}"
    print("\nSRCC on unseen references (PromptIQA prompted by 10 interval-sampled ISPs of the requirement)")
    print(header + "\n" + "-" * len(header))
    with torch.no_grad():
        plain_pred = plain(images).numpy()
    for label in TRAIN_REQUIREMENTS + HELD_OUT:
        kind = ("train " if label in TRAIN_REQUIREMENTS else "held-out ") + ("DMOS" if label in ("gmsd", "psnr_inv") else "MOS")
        te_idx, te_s = sets[label][2:]
        print(f"{label:<22}{kind:<14}{reversal(prompt_model, images, sets, label)[0]:>+7.3f}{srcc(plain_pred[te_idx], te_s):>+9.3f}")
    inverted = reversal(prompt_model, images, sets, HELD_OUT[0])[1]
    print(f"{HELD_OUT[0] + ' (ISPP inverted)':<22}{'Table 5':<14}{inverted:>+7.3f}{'':>9}")
    print(f"({time.perf_counter() - start:.0f} s) random-init tiny encoder trained end to end, lr 1e-3, batch 11")

    mini_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        images, sets = build_set(Path(tmp), MINIATURE["size"], MINIATURE["levels"], MINIATURE_TRAIN + HELD_OUT,
                                 args.seed, MINIATURE["types"], MINIATURE["normalise"])
    model = train_miniature(images, sets, MINIATURE_CFG, args.seed)
    header = f"{'requirement':<22}{'type':<14}{'ISPP':>7}{'inverted':>10}{'between':>9}"
    print(f"\nStaged miniature ({len(images)} images, blur+noise, rank labels; encoder pretrained on "
          f"{MINIATURE_TRAIN[0]}): SRCC on unseen references")
    print(header + "\n" + "-" * len(header))
    for label, kind in (("ssim", "train MOS"), ("gmsd", "train DMOS"), (HELD_OUT[0], "held-out MOS")):
        print(f"{label:<22}{kind:<14}" + "".join(f"{v:>+{w}.3f}" for v, w in zip(reversal(model, images, sets, label), (7, 10, 9))))
    print(f"({time.perf_counter() - mini_start:.0f} s)\n\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
