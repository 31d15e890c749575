"""Per-batch cost of getting back to the source model, next to the cost of adapting, in one run.

LLM-TTA reloads the source model for every batch of 8. rayiqa instead snapshots the norm layers'
parameters and running statistics in memory and copies them back (`llm_tta.norm_only_adaptation`).
For each batch this prints

  adapt    seconds of `adapt_and_predict` (10 Adam steps on the norm layers, then predict)
  restore  seconds of rayiqa's snapshot + copy-back of the norm layers (the context manager alone)
  reload   seconds of the paper's way: build the backbone again and load the full checkpoint file

and the ratios restore / adapt (goal < 2%) and reload / adapt.

    python benchmarks/tta_restore.py --quick          # tiny-cnn, 5 batches
    python benchmarks/tta_restore.py --backbone uiqa-swin-t --batches 10
"""
from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch


def timed(fn) -> float:
    """Wall seconds of one call (CUDA synchronised when a GPU is used)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(backbone_name: str, n_batches: int, batch: int, size: int, iterations: int, device: str) -> list[dict]:
    """Adapt / restore / reload seconds for each of `n_batches` random batches."""
    from rayiqa.config.tta import TTAParams
    from rayiqa.methods import llm_tta
    from rayiqa.models.backbones import create_backbone

    backbone = create_backbone(backbone_name, device)
    cfg = TTAParams(iterations=iterations)
    generator = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "source.pt"
        torch.save(backbone.state_dict(), checkpoint)

        def reload() -> None:
            fresh = create_backbone(backbone_name, device)
            fresh.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))

        def restore() -> None:
            with llm_tta.norm_only_adaptation(backbone):
                pass

        for _ in range(n_batches):
            x = torch.rand((batch, 3, size, size), generator=generator).to(device)
            ranking = torch.rand(batch, generator=generator).numpy()
            adapt = timed(partial(llm_tta.adapt_and_predict, backbone, x, ranking, cfg))
            rows.append({"adapt": adapt, "restore": timed(restore), "reload": timed(reload)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="tiny-cnn")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="B")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="5 batches")
    args = parser.parse_args(argv)
    n = 5 if args.quick else args.batches
    rows = measure(args.backbone, n, args.batch, args.size, args.iterations, args.device)
    print(f"backbone {args.backbone} on {args.device}, B={args.batch}, {args.size}px, {args.iterations} iterations")
    print(f"{'batch':>5} {'adapt s':>9} {'restore s':>10} {'reload s':>9} {'restore/adapt':>14} {'reload/adapt':>13}")
    for i, r in enumerate(rows):
        print(f"{i:>5} {r['adapt']:>9.4f} {r['restore']:>10.6f} {r['reload']:>9.4f} "
              f"{100 * r['restore'] / r['adapt']:>13.3f}% {100 * r['reload'] / r['adapt']:>12.2f}%")
    med = {k: float(np.median([r[k] for r in rows])) for k in ("adapt", "restore", "reload")}
    print(f"median restore/adapt {100 * med['restore'] / med['adapt']:.3f}% (goal < 2%), "
          f"reload/adapt {100 * med['reload'] / med['adapt']:.2f}%")


if __name__ == "__main__":
    main()
