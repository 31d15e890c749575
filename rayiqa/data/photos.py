"""Permissively licensed photographs that installed packages ship, and graded-distortion examples
made from them (random crops and sizes, SSIM against the pristine crop as the quality label).

The photographs the project bundles as samples (`rayiqa/assets/samples`, also scikit-image images)
are refused by name, so a model trained here is tested on photographs it has never seen.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from skimage import img_as_float

from rayiqa.data.distortions import distortion
from rayiqa.data.fr_metrics import ssim
from rayiqa.data.rows import DatasetError

PHOTO_LONG_SIDE = 640  # larger photographs are shrunk to this before cropping
SAMPLE_SOURCES = ("astronaut", "chelsea", "cat", "coffee", "rocket")  # bundled samples: never trained on


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook

        with cbook.get_sample_data(filename) as f:
            return np.asarray(Image.open(f))

    return load


@dataclass(frozen=True)
class Photo:
    """A photograph inside an installed package, with the licence its package states."""

    load: Callable[[], np.ndarray]
    origin: str
    licence: str


PHOTOS: dict[str, Photo] = {
    "camera": Photo(_skimage("camera"), "skimage.data.camera", "CC0 (Lav Varshney)"),
    "coins": Photo(_skimage("coins"), "skimage.data.coins", "no known copyright restrictions"),
    "clock": Photo(_skimage("clock"), "skimage.data.clock", "public domain (Stefan van der Walt)"),
    "text": Photo(_skimage("text"), "skimage.data.text", "no known copyright restrictions, public domain"),
    "brick": Photo(_skimage("brick"), "skimage.data.brick", "CC0 (CC0Textures)"),
    "grass": Photo(_skimage("grass"), "skimage.data.grass", "CC0 (CC0Textures)"),
    "gravel": Photo(_skimage("gravel"), "skimage.data.gravel", "CC0 (CC0Textures)"),
    "cell": Photo(_skimage("cell"), "skimage.data.cell", "CC0"),
    "hubble_deep_field": Photo(_skimage("hubble_deep_field"), "skimage.data.hubble_deep_field", "public domain (NASA)"),
    "immunohistochemistry": Photo(_skimage("immunohistochemistry"), "skimage.data.immunohistochemistry",
                                  "no known copyright restrictions"),
    "retina": Photo(_skimage("retina"), "skimage.data.retina", "CC0 1.0"),
    "grace_hopper": Photo(_matplotlib("grace_hopper.jpg"), "matplotlib sample_data/grace_hopper.jpg",
                          "public domain (U.S. Navy photograph)"),
}


def load_photo(name: str) -> np.ndarray:
    """The photograph `name` as uint8 RGB (grey ones stacked to three channels)."""
    if name in SAMPLE_SOURCES:
        raise DatasetError(f"{name!r} is a bundled sample photograph and stays out of training")
    if name not in PHOTOS:
        raise DatasetError(f"unknown photograph {name!r}; known: {', '.join(PHOTOS)}")
    image = np.asarray(PHOTOS[name].load())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Antialiased resize so the longer side is `long_side` px."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def random_crop(photo: np.ndarray, side_range: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A crop of random scale, size and aspect ratio, flipped and channel-permuted at random."""
    lo, hi = side_range
    longest = max(photo.shape[:2])
    scaled = resize_long_side(photo, int(rng.integers(min(hi, longest), longest + 1)))
    long_side = int(rng.integers(lo, hi + 1))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    h = min(scaled.shape[0], max(lo // 2, round(long_side / max(aspect, 1.0))))
    w = min(scaled.shape[1], max(lo // 2, round(long_side * min(aspect, 1.0))))
    y = int(rng.integers(0, scaled.shape[0] - h + 1))
    x = int(rng.integers(0, scaled.shape[1] - w + 1))
    out = scaled[y : y + h, x : x + w]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out[..., rng.permutation(3)])


def distort_at(image: np.ndarray, name: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Distortion `name` at `strength` in [0, 1] of its range (0: mildest, 1: strongest)."""
    d = distortion(name)
    param = d.mildest + strength * (d.strongest - d.mildest)
    return d.apply(image, float(round(param)) if d.integer else float(param), rng)


def quality(reference: np.ndarray, distorted: np.ndarray, floor: float) -> float:
    """The label q in [0, 1]: SSIM against the pristine image, mapped linearly from [floor, 1]."""
    value = ssim(img_as_float(reference), img_as_float(distorted))
    return float(np.clip((value - floor) / (1.0 - floor), 0.0, 1.0))


def make_example(
    sources: Sequence[str], types: Sequence[str], side_range: tuple[int, int], p_pristine: float,
    ssim_floor: float, seed: Sequence[int],
) -> dict:
    """One training row: a pristine crop and two versions of it (each distorted or not), with labels.

    Seeded by `seed` alone, so a row is the same wherever and whenever it is made.
    """
    rng = np.random.default_rng(list(seed))
    source = sources[int(rng.integers(len(sources)))]
    photo = load_photos(tuple(sources), PHOTO_LONG_SIDE)[source]
    pristine = random_crop(photo, side_range, rng)
    row: dict = {"source": source, "pristine": png_bytes(pristine)}
    for key in ("a", "b"):
        if rng.random() < p_pristine:
            image, kind, q = pristine, "none", 1.0
        else:
            kind = types[int(rng.integers(len(types)))]
            image = distort_at(pristine, kind, float(rng.uniform()), rng)
            q = quality(pristine, image, ssim_floor)
        row |= {f"image_{key}": png_bytes(image), f"type_{key}": kind, f"q_{key}": q}
    return row


@lru_cache(maxsize=4)
def load_photos(names: tuple[str, ...], max_long_side: int) -> dict[str, np.ndarray]:
    """Several photographs, each shrunk to at most `max_long_side` px (cached per process)."""
    photos = {}
    for name in names:
        photo = load_photo(name)
        photos[name] = resize_long_side(photo, max_long_side) if max(photo.shape[:2]) > max_long_side else photo
    return photos


def holdout_set(names: Sequence[str], types: Sequence[str], levels: int, long_side: int, seed: int) -> list[dict]:
    """Each photo at `long_side` px, pristine and at `levels` evenly spaced strengths of every type,
    with its SSIM against the pristine (the held-out table's rows)."""
    rows = []
    for name in names:
        pristine = resize_long_side(load_photo(name), long_side)
        rows.append({"source": name, "type": "none", "level": 0, "image": pristine, "ssim": 1.0})
        for kind in types:
            for level, strength in enumerate(np.linspace(0.0, 1.0, levels), start=1):
                rng = np.random.default_rng([seed, level, *name.encode(), *kind.encode()])
                image = distort_at(pristine, kind, float(strength), rng)
                rows.append({"source": name, "type": kind, "level": level, "image": image,
                             "ssim": ssim(img_as_float(pristine), img_as_float(image))})
    return rows
