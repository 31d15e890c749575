"""decode_image: every awkward-but-valid file becomes RGB uint8 as displayed; every broken one an error kind."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from broken import BOMB_SIDES, write_broken_files, write_tricky_files
from rayiqa.io.decode import decode_image
from rayiqa.io.errors import ERROR_KINDS

MAX_PIXELS = 64_000_000  # InputConfig's default


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    return folder, write_broken_files(folder)


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tricky")
    return folder, write_tricky_files(folder)


def test_tricky_files_decode_to_rgb_uint8_with_known_pixels(tricky):
    folder, expected = tricky
    for name, exp in expected.items():
        res = decode_image((folder / name).read_bytes(), MAX_PIXELS)
        assert res.ok, (name, res.error)
        assert res.image.dtype == np.uint8 and res.image.shape == exp.shape, name
        assert (res.height, res.width) == exp.shape[:2], name
        for (row, col), rgb in exp.pixels.items():
            got = res.image[row, col].astype(int)
            assert np.abs(got - np.array(rgb)).max() <= exp.tolerance, (name, (row, col), got.tolist(), rgb)


def test_exif_rotation_swaps_size_and_moves_the_red_corner_to_top_right(tricky):
    folder, _ = tricky
    data = (folder / "exif_rotated.jpg").read_bytes()
    assert Image.open(io.BytesIO(data)).size == (40, 20)  # stored landscape
    res = decode_image(data, MAX_PIXELS)
    assert (res.width, res.height) == (20, 40)  # displayed portrait
    img = res.image.astype(int)
    top_right, top_left, bottom_left = img[:10, 10:].mean((0, 1)), img[:10, :10].mean((0, 1)), img[30:, :10].mean((0, 1))
    assert top_right[0] > 200 and top_right[2] < 60  # red
    assert top_left[2] > 200 and bottom_left[2] > 200  # blue: not rotated the wrong way, not left as stored


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 255, 257, 32767, 32768, 65535]], dtype=np.uint16)
    res = decode_image(_png(Image.fromarray(values)), MAX_PIXELS)
    assert res.image[0, :, 0].tolist() == [0, 1, 1, 127, 128, 255]  # round(v * 255 / 65535)
    assert (res.image[..., 0] == res.image[..., 2]).all()


def test_thirty_two_bit_grey_is_read_as_sixteen_bit_data():
    values = np.array([[-5, 0, 32768, 65535, 70000]], dtype=np.int32)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "TIFF")
    res = decode_image(buf.getvalue(), MAX_PIXELS)
    assert res.image[0, :, 1].tolist() == [0, 0, 128, 255, 255]


def test_alpha_is_composited_on_white():
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [200, 0, 0, 128]]], dtype=np.uint8)
    res = decode_image(_png(Image.fromarray(rgba, "RGBA")), MAX_PIXELS)
    # alpha_composite: out = src * a + 255 * (1 - a), a = alpha / 255
    assert res.image[0].tolist() == [[255, 255, 255], [0, 0, 0], [227, 127, 127]]


def test_broken_files_give_their_error_kind(broken):
    folder, expected = broken
    for name, kind in expected.items():
        res = decode_image((folder / name).read_bytes(), MAX_PIXELS)
        assert res.image is None and res.error_kind == kind, (name, res.error_kind, res.error)
        assert kind in ERROR_KINDS and res.error


@pytest.mark.parametrize("side", BOMB_SIDES)
def test_bomb_is_rejected_from_its_header_without_decoding_pixels(broken, monkeypatch, side):
    folder, _ = broken
    data = (folder / f"bomb_{side}.png").read_bytes()
    assert len(data) < 100_000 and side * side > MAX_PIXELS  # small on disk, tens of M pixels claimed
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size))
    limit_before = Image.MAX_IMAGE_PIXELS
    res = decode_image(data, MAX_PIXELS)
    assert res.error_kind == "too_large" and res.image is None
    assert loads == []  # no pixel decoding was started
    assert Image.MAX_IMAGE_PIXELS == limit_before  # the per-call limit touched no global
    if side * side <= 2 * limit_before:  # below Pillow's own guard: ours fired and knows the size
        assert (res.width, res.height) == (side, side) and "max_pixels" in res.error


def test_max_pixels_is_a_per_call_inclusive_limit():
    data = _png(Image.new("RGB", (30, 20), (10, 20, 30)))
    assert decode_image(data, 600).ok
    over = decode_image(data, 599)
    assert over.error_kind == "too_large" and (over.width, over.height) == (30, 20)
    assert decode_image(data, 600).image[5, 5].tolist() == [10, 20, 30]  # the refusal left no state behind


def test_never_raises_on_mangled_bytes(tricky):
    folder, expected = tricky
    rng = np.random.default_rng(0)
    for name in expected:
        data = bytearray((folder / name).read_bytes())
        for _ in range(10):
            mangled = bytearray(data[: int(rng.integers(1, len(data) + 1))])
            for pos in rng.integers(0, len(mangled), size=3):
                mangled[pos] = int(rng.integers(0, 256))
            res = decode_image(bytes(mangled), MAX_PIXELS)
            assert res.ok or res.error_kind in ERROR_KINDS
            assert res.ok == (res.image is not None)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_resize_batch_is_antialiased_and_channel_first():
    from rayiqa.io.decode import resize_batch

    board = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    red = np.zeros((5, 7, 3), np.uint8)
    red[..., 0] = 255
    out = resize_batch([np.stack([board] * 3, axis=-1), red], 8)
    assert out.shape == (2, 3, 8, 8) and out.dtype == np.float32
    assert np.allclose(out[0], 0.5, atol=0.02)  # averaged, not sampled: point sampling gives 0 or 1
    assert np.allclose(out[1, 0], 1.0) and np.allclose(out[1, 1:], 0.0)
