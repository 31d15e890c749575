"""LLM-TTA's mechanism on real pixels: better rankings -> better clusters -> better adaptation.

A tiny-cnn backbone is trained (MSE on SSIM labels) on one family of synthetic distortions of real
photographs (scikit-image's bundled photos, cut into crops: the pristine references) and tested on
another family (the domain shift). Each test batch of B = 8 is then scored with

  none             the trained source model, no adaptation
  tta-iqa          TTA-IQA: the model's own clusters + its rank loss on distorted copies
  gc:base          group-contrastive loss on the model's own clusters (isolates the ranking)
  gc:psnr          group-contrastive loss on clusters from PSNR against the pristine image
  gc:ssim          ... from SSIM against the pristine image: the label itself, an oracle ranker
  gc:llm-iqa       ... from an MLLM's LLM-IQA score (7-level word standard, whole image): LLM-TTA's
                   ranker as the scoring job's `ranker: llm-iqa` computes it
  gc:prompt2       ... from the MLLM's p(good) after prompt 2 (Eq. 2): `ranker: prompt2`

PSNR is a full-reference ranker (it sees the pristine image, which an NR model never does) that is
not the label but agrees with it far better than the shifted model. The MLLM rankers (`--mllm
PRESET`, e.g. a `rayiqa train tiny-iqa` export folder) are no-reference; a random-weight MLLM ranks
nothing, so by default (`--mllm none`) they are left out.
Reports SRCC / PLCC of every approach over the test set and LLM-TTA's Table 1 statistics per ranker:
correct / wrong members of the top-k and bottom-k clusters and top-1 accuracy, against the labels.

    python benchmarks/tta_mechanism.py --quick     # ~2-3 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "brick", "grass", "gravel", "camera", "moon", "coins", "clock", "cell")
TRAIN_TYPES = ("gaussian_blur", "motion_blur", "pixelation")
TEST_TYPES = ("gaussian_noise", "jpeg")


@dataclass(frozen=True)
class ClusterStats:
    """Table 1 of LLM-TTA, summed over batches: cluster members that are / are not in the true
    top-k (resp. bottom-k), and how many batches had the true best image ranked first."""

    correct: int
    wrong: int
    top1_hits: int
    batches: int

    @property
    def top1_percent(self) -> float:
        return 100.0 * self.top1_hits / self.batches if self.batches else float("nan")


def cluster_stats(ranker_batches: list[np.ndarray], truth_batches: list[np.ndarray], k: int = 2) -> ClusterStats:
    """Compare each batch's ranker clusters (top-k / bottom-k) with the clusters of the true scores."""
    from rayiqa.methods.llm_tta import quality_clusters, rank_batch

    correct = wrong = top1 = 0
    for ranker, truth in zip(ranker_batches, truth_batches, strict=True):
        got, want = quality_clusters(ranker, k), quality_clusters(truth, k)
        hits = len(set(got.high) & set(want.high)) + len(set(got.low) & set(want.low))
        correct += hits
        wrong += 2 * k - hits
        top1 += int(rank_batch(ranker)[0] == rank_batch(truth)[0])
    return ClusterStats(correct, wrong, top1, len(ranker_batches))


def write_pristine(out_dir: Path, n_refs: int, size: int = 128) -> Path:
    """The pristine references: the four corner crops (half the short side) of each photo, resized."""
    import skimage.data

    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for crop in range(4):
        for name in PHOTOS:
            if written == n_refs:
                return out_dir
            image = np.asarray(getattr(skimage.data, name)())
            rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
            side = min(rgb.shape[:2]) // 2
            top = 0 if crop < 2 else rgb.shape[0] - side
            left = 0 if crop % 2 == 0 else rgb.shape[1] - side
            patch = Image.fromarray(rgb[top : top + side, left : left + side]).resize((size, size), Image.Resampling.LANCZOS)
            patch.save(out_dir / f"{name}_{crop}.png")
            written += 1
    return out_dir


def load_tensor(rows: list) -> torch.Tensor:
    """Images of dataset rows as one float (N, 3, H, W) batch in [0, 1]."""
    arrays = [np.asarray(Image.open(r.image).convert("RGB")) for r in rows]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def train(backbone: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    """Fit the whole backbone by MSE with Adam; returns the last epoch's mean loss."""
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(backbone.parameters(), lr=3e-3)
    backbone.train()
    loss_sum = 0.0
    for _ in range(epochs):
        loss_sum = 0.0
        for idx in torch.randperm(len(x)).split(32):
            optimiser.zero_grad()
            loss = torch.nn.functional.mse_loss(backbone(x[idx])[1], y[idx])
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(idx)
    backbone.eval()
    return loss_sum / len(x)


def mllm_rankings(preset: str, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: the MLLM's LLM-IQA score (K = 7 word standard) and its p(good) after prompt 2."""
    from rayiqa.config import MLLMConfig
    from rayiqa.methods import llm_iqa, llm_tta
    from rayiqa.models.mllm.base import LevelRequest
    from rayiqa.models.mllm.transformers_engine import TransformersEngine

    engine = TransformersEngine(MLLMConfig(preset=preset, device="cpu", dtype="float32"))
    images = [np.ascontiguousarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in x]
    k7 = llm_iqa.standard_prompt(7)
    return {
        "llm-iqa": llm_iqa.level_score(engine.level_probs([LevelRequest(k7, [im]) for im in images]), k7.level_values()),
        "prompt2": engine.level_probs([LevelRequest(llm_tta.prompt2(), [im]) for im in images])[:, 0],
    }


def run(n_refs: int, levels: int, epochs: int, iterations: int, seed: int, work: Path, mllm: str | None = None) -> dict:
    """Build the sets, train, adapt every test batch with each approach (MLLM rankers when `mllm` names a
    preset); returns the measurements."""
    from rayiqa.config.tta import TTAParams
    from rayiqa.data import make_synthetic_set
    from rayiqa.methods import llm_tta, metrics, tta_baselines
    from rayiqa.models.backbones import create_backbone

    pristine = write_pristine(work / "pristine", n_refs)
    train_rows = make_synthetic_set(pristine, work / "train", TRAIN_TYPES, levels, seed)
    test_rows = make_synthetic_set(pristine, work / "test", TEST_TYPES, levels, seed)
    torch.manual_seed(seed)
    backbone = create_backbone("tiny-cnn")
    started = time.perf_counter()
    x_train, y_train = load_tensor(train_rows), torch.tensor([r.score for r in train_rows], dtype=torch.float32)
    train_loss = train(backbone, x_train, y_train, epochs, seed)
    train_seconds = time.perf_counter() - started

    order = np.random.default_rng(seed).permutation(len(test_rows))
    n_batches = len(order) // 8
    batches = [order[i * 8 : (i + 1) * 8] for i in range(n_batches)]
    x_test = load_tensor(test_rows)
    labels = np.array([r.score for r in test_rows])
    psnr = np.array([r.labels["psnr"] for r in test_rows])
    cfg = TTAParams(iterations=iterations, seed=seed)
    external = {"psnr": psnr, "ssim": labels} | (mllm_rankings(mllm, x_test) if mllm else {})

    preds: dict[str, list[np.ndarray]] = {name: [] for name in ("none", "tta-iqa", "gc:base", *(f"gc:{r}" for r in external))}
    base_batches = []
    for idx in batches:
        x = x_test[idx]
        base = llm_tta.predict(backbone, x)
        base_batches.append(base)
        preds["none"].append(base)
        preds["tta-iqa"].append(tta_baselines.tta_iqa_adapt_and_predict(backbone, x, cfg).scores)
        for name, ranking in [("base", base), *((r, v[idx]) for r, v in external.items())]:
            preds[f"gc:{name}"].append(llm_tta.adapt_and_predict(backbone, x, ranking, cfg).scores)
    truth = np.concatenate([labels[idx] for idx in batches])
    quality = {name: metrics.evaluate(np.concatenate(p), truth) for name, p in preds.items()}
    truth_batches = [labels[idx] for idx in batches]
    rankers = {"base": base_batches} | {r: [v[idx] for idx in batches] for r, v in external.items()}
    return {
        "train": {"images": len(train_rows), "types": TRAIN_TYPES, "epochs": epochs, "loss": train_loss, "seconds": train_seconds},
        "test": {"images": n_batches * 8, "types": TEST_TYPES, "batches": n_batches},
        "quality": quality,
        "ranker_srcc": {name: metrics.srcc(np.concatenate(r), truth) for name, r in rankers.items()},
        "clusters": {name: cluster_stats(r, truth_batches) for name, r in rankers.items()},
    }


def format_report(result: dict) -> str:
    """The two tables as text."""
    tr, te = result["train"], result["test"]
    lines = [
        f"train: {tr['images']} images ({', '.join(tr['types'])}), {tr['epochs']} epochs, final MSE {tr['loss']:.4f}, {tr['seconds']:.0f}s",
        f"test:  {te['images']} images ({', '.join(te['types'])}) in {te['batches']} batches of 8; label SSIM",
        "",
        f"{'approach':<10} {'SRCC':>7} {'PLCC':>7}",
    ]
    for name, q in result["quality"].items():
        lines.append(f"{name:<10} {q['srcc']:>7.4f} {q['plcc']:>7.4f}")
    lines += ["", f"{'ranker':<8} {'SRCC':>7} {'C/W (top-2+bottom-2)':>22} {'top-1 %':>8}"]
    for name, s in result["clusters"].items():
        lines.append(f"{name:<8} {result['ranker_srcc'][name]:>7.4f} {f'{s.correct}/{s.wrong}':>22} {s.top1_percent:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 references, 3 levels, 20 epochs (~2-3 min)")
    parser.add_argument("--refs", type=int, default=60, help="pristine crops (4 per photo, at most 60)")
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=10, help="adaptation steps per batch")
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--mllm", default="none", help="MLLM preset or folder of the llm-iqa / prompt2 rankers; none: no MLLM")
    args = parser.parse_args(argv)
    refs, levels, epochs = (16, 3, 20) if args.quick else (args.refs, args.levels, args.epochs)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        mllm = None if args.mllm == "none" else args.mllm
        print(format_report(run(refs, levels, epochs, args.iterations, args.seed, Path(tmp), mllm)))


if __name__ == "__main__":
    main()
