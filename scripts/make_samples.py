"""Regenerate rayiqa/assets/samples/: public-domain scikit-image photos with graded synthetic distortions.

Each source is resized to LONG_SIDE px on its long side and saved as a lossless PNG (the pristine
reference); each (distortion, level) is saved as JPEG q95 (the JPEG distortion at its own quality).
labels.csv holds full-reference SSIM and PSNR of every file, read back from disk, against its
pristine PNG: a pseudo-MOS for demos and evaluation. Seeded, so a rerun rewrites identical files
(for the same Pillow / libjpeg). Usage: python scripts/make_samples.py [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageEnhance
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import random_noise

# Only images that ship inside the scikit-image wheel (no pooch download); licences in LICENSE.md.
SOURCES = ("astronaut", "chelsea", "coffee", "rocket")
LONG_SIDE = 384
SAVE_QUALITY = 95
SEED = 20261123
# distortion -> parameter per level (1 = mild, 2 = strong)
LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_blur": (1.2, 3.0),  # sigma in pixels
    "gaussian_noise": (0.002, 0.01),  # variance on [0, 1] intensities
    "jpeg": (30, 8),  # JPEG quality
    "contrast": (0.55, 0.25),  # PIL ImageEnhance.Contrast factor (1 = unchanged)
}


def load_source(name: str) -> Image.Image:
    """A bundled scikit-image photo resized (Lanczos) to LONG_SIDE on its long side."""
    im = Image.fromarray(getattr(skimage.data, name)())
    scale = LONG_SIDE / max(im.size)
    return im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)


def _to_uint8(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8))


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def distort(im: Image.Image, distortion: str, param: float, rng: np.random.Generator) -> bytes:
    """The encoded JPEG bytes of `im` under one distortion at one parameter."""
    if distortion == "jpeg":
        return _jpeg(im, int(param))
    if distortion == "gaussian_blur":
        out = _to_uint8(gaussian(np.asarray(im) / 255.0, sigma=param, channel_axis=-1))
    elif distortion == "gaussian_noise":
        out = _to_uint8(random_noise(np.asarray(im), mode="gaussian", var=param, rng=rng))
    elif distortion == "contrast":
        out = ImageEnhance.Contrast(im).enhance(param)
    else:
        raise ValueError(f"unknown distortion {distortion!r}; known: {sorted(LEVELS)}")
    return _jpeg(out, SAVE_QUALITY)


def fr_labels(reference: np.ndarray, path: Path) -> tuple[float, float]:
    """(SSIM, PSNR) of the file at `path` as decoded, against the pristine pixels."""
    test = np.asarray(Image.open(path).convert("RGB"))
    ssim = structural_similarity(reference, test, channel_axis=-1, data_range=255)
    psnr = peak_signal_noise_ratio(reference, test, data_range=255)
    return float(ssim), float(psnr)


def make_samples(out: Path) -> list[dict]:
    """Write every sample image and labels.csv into `out`; return the label rows."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    rows = []
    for source in SOURCES:
        pristine = load_source(source)
        pristine.save(out / f"{source}.png", optimize=True)
        reference = np.asarray(Image.open(out / f"{source}.png").convert("RGB"))
        entries = [(f"{source}.png", "none", 0, 0.0)]
        for distortion, params in LEVELS.items():
            for level, param in enumerate(params, start=1):
                name = f"{source}_{distortion}_{level}.jpg"
                (out / name).write_bytes(distort(pristine, distortion, param, rng))
                entries.append((name, distortion, level, param))
        for name, distortion, level, param in entries:
            ssim, psnr = (1.0, float("inf")) if level == 0 else fr_labels(reference, out / name)
            rows.append(dict(path=name, source=source, distortion=distortion, level=level, param=param,
                             ssim=round(ssim, 6), psnr=round(psnr, 4)))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    default = Path(__file__).resolve().parents[1] / "rayiqa" / "assets" / "samples"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default)
    rows = make_samples(parser.parse_args().out)
    print(f"wrote {len(rows)} images + labels.csv")


if __name__ == "__main__":
    main()
