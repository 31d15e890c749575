"""Permissively licensed photographs that installed packages ship, and graded-distortion examples
made from them (random crops and sizes, GMSD against the pristine crop as the quality label).

The photographs the project bundles as samples (`rayiqa/assets/samples`, also scikit-image images)
are refused by name, so a model trained here is tested on photographs it has never seen.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from skimage import filters, img_as_float

from rayiqa.data.distortions import distortion
from rayiqa.data.dead_leaves import dead_leaves
from rayiqa.data.fr_metrics import gmsd, gmsd_cells, ssim
from rayiqa.data.rows import DatasetError

PHOTO_LONG_SIDE = 640  # larger photographs are shrunk to this before cropping
SAMPLE_SOURCES = ("astronaut", "chelsea", "cat", "coffee", "rocket")  # bundled samples: never trained on


def _skimage(name: str, part: int | None = None) -> Callable[[], np.ndarray]:
    """Loader of `skimage.data.<name>()` (or item `part` of what it returns)."""

    def load() -> np.ndarray:
        import skimage.data

        data = getattr(skimage.data, name)()
        return data if part is None else data[part]

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
    "motorcycle": Photo(_skimage("stereo_motorcycle", 0), "skimage.data.stereo_motorcycle (left)",
                        "BSD-3-Clause, as part of scikit-image (Middlebury 2014 stereo dataset)"),
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


def defocus_background(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`image` with everything outside a random ellipse Gaussian-blurred (sigma 1.5-5 px) behind a soft
    edge: a shallow depth of field. A pristine image with a defocused background teaches that a soft
    region is not a blurred image as long as some of it is sharp."""
    h, w = image.shape[:2]
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    ry, rx = rng.uniform(0.25, 0.55) * h, rng.uniform(0.25, 0.55) * w
    yy, xx = np.mgrid[:h, :w]
    sharp = filters.gaussian((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1).astype(float), rng.uniform(1, 3))
    x = img_as_float(image)
    out = sharp[..., None] * x + (1 - sharp[..., None]) * filters.gaussian(x, rng.uniform(1.5, 5), channel_axis=-1)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def distort_at(image: np.ndarray, name: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Distortion `name` at `strength` in [0, 1] of its range (0: mildest, 1: strongest)."""
    d = distortion(name)
    param = d.mildest + strength * (d.strongest - d.mildest)
    return d.apply(image, float(round(param)) if d.integer else float(param), rng)


def quality(gmsd_value: np.ndarray | float, ceiling: float) -> np.ndarray | float:
    """The label q in [0, 1] from a GMSD (0: identical): 1 - GMSD / ceiling, clipped. GMSD rather than SSIM,
    because SSIM punishes noise far harder than blur, JPEG or contrast at the same visible strength."""
    return np.clip(1.0 - np.asarray(gmsd_value) / ceiling, 0.0, 1.0)


def make_example(
    sources: Sequence[str], types: Mapping[str, float], side_range: tuple[int, int], dead_leaves_share: float,
    defocus_share: float, off_grid_share: float, versions: int, gmsd_ceiling: float, grid: int, seed: Sequence[int],
) -> dict:
    """One training row: a pristine image and `versions` distorted copies of it, with labels.

    The pristine image is a random crop of a photograph or, with probability `dead_leaves_share`, a
    dead-leaves image, and with probability `defocus_share` its background is defocused. Its sides are
    cut to multiples of `grid` (a vision tower's merged-token size), so the processor leaves it unscaled,
    except with probability `off_grid_share`: then they stay as cropped and the processor resizes the
    images to whole tokens, as it does almost every image a user sends. Each copy has a random type
    (drawn with the weights in `types`) and strength, the image-level label q (GMSD, see `quality`) and
    a per-cell map of the same mapping of each cell's own GMSD, on the token grid (`on_grid`). Image 0
    is the pristine one (q = 1, type "none"). Seeded by `seed` alone, so a row is the same wherever and
    whenever it is made.
    """
    rng = np.random.default_rng(list(seed))
    lo, hi = side_range
    if rng.random() < dead_leaves_share:
        source, side = "dead_leaves", int(rng.integers(lo, hi + 1))
        aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        content = dead_leaves(round(side / max(aspect, 1.0)), round(side * min(aspect, 1.0)), rng)
    else:
        source = sources[int(rng.integers(len(sources)))]
        content = random_crop(load_photos(tuple(sources), PHOTO_LONG_SIDE)[source], side_range, rng)
    if rng.random() >= off_grid_share or min(content.shape[:2]) < 2 * grid:  # the processor would scale a smaller one up
        content = resize_to(content, *(max(2 * grid, n // grid * grid) for n in content.shape[:2]))
    pristine = np.ascontiguousarray(content)
    if rng.random() < defocus_share:
        pristine = defocus_background(pristine, rng)
    pristine_f, reference_f = img_as_float(pristine), img_as_float(on_grid(pristine, grid))
    gh, gw = reference_f.shape[0] // grid, reference_f.shape[1] // grid
    row: dict = {"source": source, "images": [png_bytes(pristine)], "q": [1.0], "types": ["none"],
                 "qmaps": [np.ones((gh, gw), np.float32).tobytes()], "grid_hw": [gh, gw]}
    kinds, weights = list(types), np.array(list(types.values()), dtype=float)
    p = weights / weights.sum()
    for _ in range(versions):
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        image = distort_at(pristine, kind, float(rng.uniform()), rng)
        row["images"].append(png_bytes(image))
        row["q"].append(float(quality(gmsd(pristine_f, img_as_float(image)), gmsd_ceiling)))
        row["types"].append(kind)
        cells = gmsd_cells(reference_f, img_as_float(on_grid(image, grid)), grid)
        row["qmaps"].append(quality(cells, gmsd_ceiling).astype(np.float32).tobytes())
    return row


def on_grid(image: np.ndarray, grid: int) -> np.ndarray:
    """`image` resized (nearest neighbour) to the nearest whole number of `grid` px cells per side, as the
    Qwen2-VL processor resizes an image of at least 2 x 2 cells within its pixel bounds, so per-cell labels
    line up with its tokens."""
    h, w = (round(n / grid) * grid for n in image.shape[:2])
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.NEAREST))


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` cropped to at most height x width from its top-left corner, then (only if smaller) resized up."""
    out = image[:height, :width]
    if out.shape[:2] != (height, width):
        out = np.asarray(Image.fromarray(out).resize((width, height), Image.Resampling.LANCZOS))
    return out


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
