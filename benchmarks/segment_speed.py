"""Fast mask generator vs SAM2's own generator on the same model, images and settings, in one run.

Images/s of each generator and where its time goes (image encoder / mask decoder / the rest, which
is post-processing: upsampling, filters, NMS, RLE), at the tiny preset's 256 px and at 1024 px with
the same hiera-t weights. Random weights keep no mask at SAM2's default thresholds, so, as in the
equal-output tests, the decoder's mask output is scaled by 20 and the thresholds lowered until
dozens of masks per image survive; the table reports how many each generator kept.

    python benchmarks/segment_speed.py --quick     # 2 images, 8 x 8 points
    python benchmarks/segment_speed.py -n 6 --points 16
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from rayiqa.config import SegmenterConfig
from rayiqa.io.samples import samples_dir
from rayiqa.models.segmenter import Sam2Segmenter


def images(n: int, side: int) -> list[np.ndarray]:
    """n sample photos resized so their long side is `side` px."""
    paths = sorted(p for p in samples_dir().glob("*") if p.suffix in (".jpg", ".png"))
    out = []
    for i in range(n):
        im = Image.open(paths[i % len(paths)]).convert("RGB")
        scale = side / max(im.size)
        out.append(np.asarray(im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)))
    return out


class Split:
    """Seconds spent in the image encoder and the mask decoder of one model, by wrapping their forwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.encoder = self.decoder = 0.0
        for name, part in (("encoder", model.image_encoder), ("decoder", model.sam_mask_decoder)):
            forward = part.forward

            def timed(*args, _forward=forward, _name=name, **kwargs):
                started = time.perf_counter()
                out = _forward(*args, **kwargs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                setattr(self, _name, getattr(self, _name) + time.perf_counter() - started)
                return out

            part.forward = timed




def measure(cfg: SegmenterConfig, generator: str, inputs: list[np.ndarray]) -> dict:
    seg = Sam2Segmenter(cfg.model_copy(update={"generator": generator}), seed=0)
    with torch.no_grad():
        for mlp in seg.model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20)
    seg.masks(inputs[0])  # warm-up (first-call allocations, jit)
    split = Split(seg.model)
    kept = 0
    started = time.perf_counter()
    for image in inputs:
        kept += len(seg.masks(image))
    total = time.perf_counter() - started
    return {"s": total, "enc": split.encoder, "dec": split.decoder, "post": total - split.encoder - split.decoder,
            "kept": kept / len(inputs)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 images, 8 x 8 points")
    ap.add_argument("-n", type=int, default=4, help="images per setting")
    ap.add_argument("--points", type=int, default=16, help="points per side")
    ap.add_argument("--side", type=int, default=768, help="long side of the inputs, px")
    ap.add_argument("--sizes", default="256,1024", help="SAM2 input sizes")
    args = ap.parse_args(argv)
    n, points = (2, 8) if args.quick else (args.n, args.points)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1) if device == "cpu" else None
    inputs = images(n, args.side)
    rows = []
    for size in map(int, args.sizes.split(",")):
        cfg = SegmenterConfig(image_size=size, points_per_side=points, points_per_batch=64 if device == "cpu" else 256,
                              pred_iou_thresh=0.5, stability_score_thresh=0.4, box_nms_thresh=1.0)
        result = {g: measure(cfg, g, inputs) for g in ("sam2", "fast")}
        rows.append((size, result))
    where = f"{device}, {'1 thread' if device == 'cpu' else torch.cuda.get_device_name()}"
    print(f"\nsegment_speed: {n} images of {args.side} px long side, {points}x{points} points, tiny hiera-t weights, {where}")
    print(f"{'SAM2 px':>7} {'generator':>9} {'img/s':>7} {'masks/img':>9} {'encoder':>8} {'decoder':>8} {'post':>8} {'fast/sam2':>10}")
    for size, result in rows:
        for g, r in result.items():
            ratio = result["sam2"]["s"] / r["s"]
            shares = [100 * r[k] / r["s"] for k in ("enc", "dec", "post")]
            print(f"{size:7d} {g:>9} {n / r['s']:7.3f} {r['kept']:9.1f} " + " ".join(f"{s:7.1f}%" for s in shares) + f" {ratio:10.2f}")


if __name__ == "__main__":
    main()
