"""PromptIQA's Tables 3 and 5 in miniature: does a small PromptIQA follow a new requirement stated by its ISPP?

Pristine images (scikit-image's bundled photos, shrunk) are distorted with `make_synthetic_set` and
labelled by full-reference metrics; each label column is one assessment requirement. A small
PromptIQA (in-batch prompting, RS/RF) and a plain regressor (same encoder and regressor, no prompt:
the paper's "w/o prompt") are trained on the same mixed batches of the training requirements
(one MOS-like, one DMOS-like), on the training references only. Both are then tested on unseen
references under every requirement, including held-out ones (MOS-like and its DMOS-like inversion);
PromptIQA gets a 10-ISP prompt interval-sampled from that requirement's training references. The
last row is Table 5's inversion: the held-out MOS-like labels scored with the ISPP's scores inverted.
Trained in-process with the library's methods (no Ray: this measures the method, not the cluster).

    python benchmarks/promptiqa_requirements.py [--quick]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from rayiqa.config.promptiqa import PromptIQAModelConfig
from rayiqa.data import load_dataset, make_synthetic_set, min_max_normalize, reference_split
from rayiqa.methods.metrics import srcc
from rayiqa.methods.prompt_iqa import InBatchPromptIQA, in_batch_loss, interval_sampling, score_with_ispp
from rayiqa.models.promptiqa import PlainRegressor, PromptIQA, to_batch

PRISTINE = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
            "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "colorwheel")
TRAIN_REQUIREMENTS = ("ssim", "gmsd")  # MOS-like, DMOS-like
HELD_OUT = ("psnr", "psnr_inv")  # a new MOS-like requirement and its DMOS-like inversion


def write_pristine(folder: Path, size: int) -> None:
    """scikit-image's bundled photos (no download), RGB, resized to size x size."""
    for name in PRISTINE:
        image = getattr(skdata, name)()
        rgb = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
        Image.fromarray(rgb.astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS).save(folder / f"{name}.png")


def requirement_sets(root: str, labels: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """label -> (train idx, train scores, test idx, test scores): same reference split for all, each side min-max normalised."""
    rows = load_dataset("synthetic", root, label="ssim")
    index = {row.image: i for i, row in enumerate(rows)}
    split = reference_split(rows, 0.7, seed=0)
    out = {}
    for label in labels:
        sides = []
        for part in (split.train, split.test):
            relabelled = min_max_normalize([replace(r, score=r.labels[label]) for r in part])
            sides += [np.array([index[r.image] for r in relabelled]), np.array([r.score for r in relabelled], dtype=np.float32)]
        out[label] = tuple(sides)
    return out


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
        pristine, root = Path(tmp) / "pristine", Path(tmp) / "synthetic"
        pristine.mkdir()
        write_pristine(pristine, size)
        rows = make_synthetic_set(pristine, root, levels=levels, seed=args.seed)
        images = to_batch([np.asarray(Image.open(r.image).convert("RGB")) for r in rows], size)
        sets = requirement_sets(str(root), TRAIN_REQUIREMENTS + HELD_OUT)
    print(f"{len(rows)} images from {len(PRISTINE)} references ({time.perf_counter() - start:.0f} s); training {steps} steps")
    prompt_model, plain = train(images, sets, cfg, steps, batch=11, lr=1e-3, seed=args.seed)

    header = f"{'requirement':<22}{'type':<14}{'PromptIQA':>7}{'plain':>9}"
    print("\nSRCC on unseen references (PromptIQA prompted by 10 interval-sampled ISPs of the requirement)")
    print(header + "\n" + "-" * len(header))
    with torch.no_grad():
        plain_pred = plain(images).numpy()
        for label in TRAIN_REQUIREMENTS + HELD_OUT:
            tr_idx, tr_s, te_idx, te_s = sets[label]
            ispp = interval_sampling(tr_s, 10)
            pred = score_with_ispp(prompt_model, images[te_idx], images[tr_idx[ispp]], torch.from_numpy(tr_s[ispp]))
            kind = ("train " if label in TRAIN_REQUIREMENTS else "held-out ") + ("DMOS" if label in ("gmsd", "psnr_inv") else "MOS")
            print(f"{label:<22}{kind:<14}{srcc(pred.numpy(), te_s):>+7.3f}{srcc(plain_pred[te_idx], te_s):>+9.3f}")
        tr_idx, tr_s, te_idx, te_s = sets[HELD_OUT[0]]
        ispp = interval_sampling(tr_s, 10)
        inverted = score_with_ispp(prompt_model, images[te_idx], images[tr_idx[ispp]], torch.from_numpy(1 - tr_s[ispp]))
        print(f"{HELD_OUT[0] + ' (ISPP inverted)':<22}{'Table 5':<14}{srcc(inverted.numpy(), te_s):>+7.3f}{'':>9}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; random-init tiny encoder trained from scratch, lr 1e-3, batch 11")


if __name__ == "__main__":
    main()
