"""Test helper (not a test file): writes broken and tricky-but-valid image files with their expected outcome.

`write_broken_files` -> {file name: expected error kind}; `write_tricky_files` -> {file name: Expected}
(decoded shape and a few known pixels). Files are built in memory with Pillow, except two PNGs that
Pillow cannot write (a 48-bit RGB one and a 20000 x 20000 bomb), which are assembled chunk by chunk.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Bomb sides: 9000^2 = 81 M pixels passes Pillow's own global guard (2 x 89 M) and must be caught
# by decode_image's max_pixels (64 M by default); 20000^2 = 400 M trips Pillow's guard inside open().
BOMB_SIDES = (9_000, 20_000)
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class Expected:
    """What a valid file must decode to: RGB shape (H, W, 3) and known pixels {(row, col): rgb}."""

    shape: tuple[int, int, int]
    pixels: dict[tuple[int, int], tuple[int, int, int]]
    tolerance: int = 0  # per channel; lossy formats need a few levels


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG from an IHDR description and an already-compressed IDAT payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def bomb_png(side: int) -> bytes:
    """A valid all-black 1-bit PNG of side x side pixels, compressed row by row (never held in memory)."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png_bytes(side, side, 1, 0, idat)


def rgb48_png(values: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG from a (H, W, 3) uint16 array."""
    big_endian = values.astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in big_endian)
    return png_bytes(values.shape[1], values.shape[0], 16, 2, zlib.compress(raw))


def _encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _noise_rgb(height: int, width: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _corrupt_bmp() -> bytes:
    """A BMP whose header names compression 99, which no decoder knows."""
    data = bytearray(_encode(Image.new("RGB", (8, 8), RED), "BMP"))
    data[30:34] = struct.pack("<I", 99)  # BITMAPINFOHEADER.biCompression
    return bytes(data)


def _corrupt_png_header() -> bytes:
    """A PNG whose IHDR checksum is wrong, so no plugin accepts the header."""
    data = bytearray(_encode(Image.new("RGB", (8, 8), RED), "PNG"))
    data[29] ^= 0xFF  # a byte of the IHDR CRC
    return bytes(data)


def write_broken_files(folder: Path) -> dict[str, str]:
    """Write one file per failure mode into `folder`; return {file name: expected error kind}."""
    jpeg = _encode(_noise_rgb(64, 64), "JPEG", quality=90)
    png = _encode(_noise_rgb(64, 64), "PNG")
    files = {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "text.png": (b"this is a note, not a picture\n", "not_an_image"),
        "corrupt_header.png": (_corrupt_png_header(), "not_an_image"),
        "unsupported.bmp": (_corrupt_bmp(), "unsupported"),
        **{f"bomb_{side}.png": (bomb_png(side), "too_large") for side in BOMB_SIDES},
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: kind for name, (_, kind) in files.items()}


def _exif_rotated_jpeg() -> bytes:
    """40 wide x 20 high, red 10x10 top-left block on blue, EXIF orientation 6 (display rotated 90 deg CW)."""
    im = Image.new("RGB", (40, 20), BLUE)
    im.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(im, "JPEG", quality=95, exif=exif)


def _cmyk_jpeg() -> bytes:
    """Left half pure red in CMYK (0, 255, 255, 0), right half white (no ink)."""
    im = Image.new("CMYK", (32, 24), (0, 0, 0, 0))
    im.paste((0, 255, 255, 0), (0, 0, 16, 24))
    return _encode(im, "JPEG", quality=95)


def _palette_transparent_png() -> bytes:
    """Palette index 0 = red but fully transparent (left half), index 1 = opaque green (right half)."""
    im = Image.new("P", (8, 4), 1)
    im.putpalette(RED + GREEN)
    im.paste(0, (0, 0, 4, 4))
    return _encode(im, "PNG", transparency=0)


def _la_png() -> bytes:
    """Black everywhere; alpha 0 in the left column, 255 in the middle, 128 in the right."""
    alpha = np.array([[0, 255, 128]] * 2, dtype=np.uint8)
    return _encode(Image.merge("LA", (Image.new("L", (3, 2), 0), Image.fromarray(alpha))), "PNG")


def _gray16_png() -> bytes:
    return _encode(Image.fromarray(np.array([[0, 255, 32768, 65535]] * 2, dtype=np.uint16)), "PNG")


def _one_bit_png() -> bytes:
    im = Image.new("1", (4, 2), 0)
    im.putpixel((1, 0), 1)
    return _encode(im, "PNG")


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (6, 4), RED), Image.new("RGB", (6, 4), BLUE)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def write_tricky_files(folder: Path) -> dict[str, Expected]:
    """Write valid files in awkward modes into `folder`; return {file name: what they must decode to}."""
    files = {
        "exif_rotated.jpg": (_exif_rotated_jpeg(), Expected((40, 20, 3), {(2, 17): RED, (2, 2): BLUE, (37, 2): BLUE}, 40)),
        "cmyk.jpg": (_cmyk_jpeg(), Expected((24, 32, 3), {(12, 4): RED, (12, 28): WHITE}, 12)),
        "palette_transparent.png": (_palette_transparent_png(), Expected((4, 8, 3), {(1, 1): WHITE, (1, 6): GREEN})),
        "la.png": (_la_png(), Expected((2, 3, 3), {(0, 0): WHITE, (0, 1): BLACK, (0, 2): (127, 127, 127)})),
        "gray16.png": (_gray16_png(), Expected((2, 4, 3), {(0, 0): BLACK, (0, 1): (1, 1, 1), (0, 2): (128,) * 3, (1, 3): WHITE})),
        "rgb48.png": (
            rgb48_png(np.array([[[0, 255, 32768], [65535, 32767, 257]]], dtype=np.uint16)),
            Expected((1, 2, 3), {(0, 0): (0, 0, 128), (0, 1): (255, 127, 1)}),
        ),
        "one_bit.png": (_one_bit_png(), Expected((2, 4, 3), {(0, 0): BLACK, (0, 1): WHITE})),
        "animated.gif": (_animated_gif(), Expected((4, 6, 3), {(0, 0): RED, (3, 5): RED})),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}
