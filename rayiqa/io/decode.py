"""Bytes -> RGB uint8 (H, W, 3) with Pillow; a bad file becomes a `DecodeResult` with an error kind.

What it normalises, so that every scorer sees the same pixels:
- EXIF orientation is applied (`ImageOps.exif_transpose`), so width/height are as displayed.
- Transparency (RGBA, LA, PA, P or L/RGB with a tRNS key) is composited on WHITE, the way a
  browser shows a transparent image on a plain page; a bare drop of alpha would reveal whatever
  colour the transparent pixels happen to store.
- 16-bit grey (I;16*, and I, taken as 16-bit data) is scaled v*255/65535 rounded, not clipped.
  48-bit RGB PNGs are reduced by Pillow itself on open to their high byte (v >> 8, within one
  level of the rounded scale); Pillow has no 16-bit RGB mode to do better from.
- 1-bit, palette, CMYK, YCbCr: Pillow's own `convert("RGB")`. Animated/multi-page: first frame.
Decompression bombs: the header's width x height is compared with `max_pixels` right after
`Image.open` (which parses only the header) and before any pixel is decoded; the limit is per call,
and `PIL.Image.MAX_IMAGE_PIXELS` (process-global) is never touched. Pillow's own guard still runs
inside `open()` and refuses more than 2 x MAX_IMAGE_PIXELS (~179 M) whatever `max_pixels` says
(reported as "too_large" without a size). Error kinds: `ERROR_KINDS`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rayiqa.io.errors import ERROR_KINDS

WHITE = (255, 255, 255, 255)
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@dataclass(frozen=True)
class DecodeResult:
    """A decoded image (RGB uint8, H x W x 3) or the reason there is none (`error_kind` in ERROR_KINDS)."""

    image: np.ndarray | None
    error_kind: str | None = None
    error: str | None = None
    width: int | None = None  # as displayed (after EXIF rotation); from the header on errors
    height: int | None = None
    format: str | None = None  # Pillow's format name: "JPEG", "PNG", ...

    @property
    def ok(self) -> bool:
        return self.error_kind is None


def _failure(kind: str, message: str, size: tuple[int, int] | None = None, fmt: str | None = None) -> DecodeResult:
    assert kind in ERROR_KINDS, kind
    width, height = size if size else (None, None)
    return DecodeResult(image=None, error_kind=kind, error=message, width=width, height=height, format=fmt)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _sixteen_bit_to_rgb(im: Image.Image) -> np.ndarray:
    """Grey 16-bit -> RGB uint8 with round-half-up integer scaling: 65535 -> 255, 32768 -> 128."""
    values = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image in any mode -> RGB uint8 array (transparency composited on white)."""
    if im.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(im)
    if im.has_transparency_data:
        on_white = Image.alpha_composite(Image.new("RGBA", im.size, WHITE), im.convert("RGBA"))
        return np.array(on_white.convert("RGB"))
    return np.array(im.convert("RGB"))  # a writable copy that owns its memory


def decode_image(data: bytes, max_pixels: int) -> DecodeResult:
    """Decode `data` into an RGB uint8 array, refusing more than `max_pixels` before decoding. Never raises."""
    if len(data) == 0:
        return _failure("empty", "the file has 0 bytes")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _failure("not_an_image", f"no image format recognises these bytes (starting {data[:12]!r})")
    except Image.DecompressionBombError as e:  # Pillow's own, coarser, guard fired inside open()
        return _failure("too_large", _describe(e))
    except Exception as e:  # a format Pillow recognised but refuses (e.g. an exotic BMP compression)
        return _failure("unsupported", _describe(e))
    with im:
        size, fmt = im.size, im.format
        width, height = size
        if width * height > max_pixels:
            return _failure("too_large", f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}", size, fmt)
        try:
            im.load()
        except Exception as e:
            kind = "unsupported" if "not available" in str(e) else "truncated"  # missing codec vs bad data
            return _failure(kind, _describe(e), size, fmt)
        try:
            ImageOps.exif_transpose(im, in_place=True)
            rgb = to_rgb_array(im)
        except Exception as e:  # e.g. a mode with no RGB conversion (LAB) or an unreadable EXIF block
            return _failure("unsupported", f"mode {im.mode}: {_describe(e)}", size, fmt)
    return DecodeResult(image=rgb, width=rgb.shape[1], height=rgb.shape[0], format=fmt)


def resize_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """RGB uint8 images (H, W, 3), any sizes -> (N, 3, size, size) float32 in [0, 1]: PIL's bilinear, which
    widens its filter when shrinking (antialiased). The one resize of the trained models' inputs, torch-free
    so that Ray Data loader tasks stay light."""
    resample = Image.Resampling.BILINEAR
    out = np.stack([np.asarray(Image.fromarray(im).resize((size, size), resample)) for im in images])
    return out.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
