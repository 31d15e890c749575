"""KADID-style synthetic distortions: each type maps a strength parameter to a distorted image.

Images are uint8 RGB arrays (H, W, 3). `level_params(name, levels)` spreads a type's parameter
evenly from its mildest to its strongest value, so level 1 is the mildest and `levels` the strongest.
Randomness (noise, motion direction) comes only from the `rng` passed in, so a seed fixes the output.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage
from skimage import draw, filters, img_as_float, img_as_ubyte, util

from rayiqa.data.rows import DatasetError

Apply = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _gaussian_blur(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    blurred = filters.gaussian(img_as_float(image), sigma=sigma, channel_axis=-1)
    return img_as_ubyte(np.clip(blurred, 0.0, 1.0))  # float rounding can leave a hair above 1


def _motion_blur(image: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a normalised line of `length` pixels at a random angle."""
    size = int(length) | 1  # odd, so the line is centred
    angle = rng.uniform(0.0, np.pi)
    half = (size - 1) / 2
    dr, dc = half * np.sin(angle), half * np.cos(angle)
    kernel = np.zeros((size, size))
    rr, cc = draw.line(int(round(half - dr)), int(round(half - dc)), int(round(half + dr)), int(round(half + dc)))
    kernel[rr, cc] = 1.0
    kernel /= kernel.sum()
    blurred = ndimage.convolve(img_as_float(image), kernel[:, :, None], mode="reflect")
    return img_as_ubyte(np.clip(blurred, 0.0, 1.0))


def _gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return img_as_ubyte(util.random_noise(img_as_float(image), mode="gaussian", var=sigma**2, rng=rng))


def _jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(buffer).convert("RGB"))


def _enhance(enhancer: type[ImageEnhance.Contrast | ImageEnhance.Brightness | ImageEnhance.Color]) -> Apply:
    """A PIL enhancer (Contrast, Brightness, Color) with factor < 1 as a distortion."""

    def apply(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(enhancer(Image.fromarray(image)).enhance(factor))

    return apply


def _pixelate(image: np.ndarray, block: float, rng: np.random.Generator) -> np.ndarray:
    """Average over block x block cells, then blow back up with nearest neighbour."""
    height, width = image.shape[:2]
    small_size = (max(1, round(width / block)), max(1, round(height / block)))
    small = Image.fromarray(image).resize(small_size, Image.Resampling.BOX)
    return np.asarray(small.resize((width, height), Image.Resampling.NEAREST))


@dataclass(frozen=True)
class Distortion:
    """A distortion type: how to apply it and its parameter from mildest to strongest."""

    name: str
    apply: Apply
    mildest: float
    strongest: float
    integer: bool = False


DISTORTIONS: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion("gaussian_blur", _gaussian_blur, 0.5, 4.0),  # sigma, pixels
        Distortion("motion_blur", _motion_blur, 3, 21, integer=True),  # line length, pixels
        Distortion("gaussian_noise", _gaussian_noise, 0.02, 0.2),  # std on [0, 1]
        Distortion("jpeg", _jpeg, 50, 3, integer=True),  # quality
        Distortion("contrast", _enhance(ImageEnhance.Contrast), 0.75, 0.15),  # factor
        Distortion("brightness", _enhance(ImageEnhance.Brightness), 0.8, 0.25),  # factor (darkening)
        Distortion("saturation", _enhance(ImageEnhance.Color), 0.7, 0.0),  # factor (desaturation)
        Distortion("pixelation", _pixelate, 2, 12, integer=True),  # block size, pixels
    )
}


def distortion(name: str) -> Distortion:
    """The registered distortion `name`, or an error listing the known ones."""
    if name not in DISTORTIONS:
        raise DatasetError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}")
    return DISTORTIONS[name]


def level_params(name: str, levels: int) -> list[float]:
    """Parameters of levels 1..`levels`, evenly spaced from mildest to strongest."""
    if levels < 1:
        raise DatasetError(f"levels must be >= 1, got {levels}")
    d = distortion(name)
    params = np.linspace(d.mildest, d.strongest, levels)
    return [float(round(p)) if d.integer else float(p) for p in params]


def apply_distortion(image: np.ndarray, name: str, param: float, rng: np.random.Generator) -> np.ndarray:
    """Distort a uint8 RGB image with type `name` at strength `param`."""
    return distortion(name).apply(image, param, rng)
