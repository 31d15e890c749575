"""read_rgb / try_read_rgb: the one image reader gives the decoder's pixels, a bad file's error kind as a
value or as an ImageReadError naming the URI, and raises on a dead store (reached with the config's storage).
Byte reads from a live S3 store are tested in test_sources."""
from __future__ import annotations

import io
import socket

import numpy as np
import pytest
from PIL import Image

from rayiqa.config import InputConfig, StorageConfig
from rayiqa.config.study import StudyDataConfig
from rayiqa.io.decode import decode_image
from rayiqa.io.errors import StoreUnavailable
from rayiqa.io.read import ImageReadError, read_rgb, try_read_rgb

PIXELS = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)


def png(pixels: np.ndarray = PIXELS) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "good.png").write_bytes(png())
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    return tmp_path


def test_a_local_image_is_the_decoders_pixels(files):
    uri = str(files / "good.png")
    image = read_rgb(uri, InputConfig())
    np.testing.assert_array_equal(image, PIXELS)
    np.testing.assert_array_equal(image, decode_image(png(), 10**6).image)
    got, kind, message = try_read_rgb(f"file://{uri}", InputConfig())
    np.testing.assert_array_equal(got, PIXELS)
    assert (kind, message) == (None, None)


@pytest.mark.parametrize("name, cfg, kind", [
    ("missing.png", InputConfig(), "read_error"),
    ("bad.png", InputConfig(), "not_an_image"),
    ("empty.png", InputConfig(), "empty"),
    ("good.png", InputConfig(max_bytes=100), "too_many_bytes"),
    ("good.png", InputConfig(max_pixels=30 * 40 - 1), "too_large"),
    ("good.png", StudyDataConfig(max_pixels=30 * 40 - 1), "too_large"),  # any config with the three limits
])
def test_a_bad_file_is_a_value_or_an_error_naming_it(files, name, cfg, kind):
    uri = str(files / name)
    image, got_kind, message = try_read_rgb(uri, cfg)
    assert image is None and got_kind == kind and message
    with pytest.raises(ImageReadError) as err:
        read_rgb(uri, cfg)
    assert err.value.kind == kind and err.value.uri == uri and isinstance(err.value, ValueError)
    text = str(err.value)
    assert text.startswith(f"{uri}: {kind}: ") and not text.startswith(f"{uri}: {kind}: {uri}")  # named once up front


def test_an_unreachable_store_raises_rather_than_failing_the_image():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = StorageConfig(endpoint_url=f"http://127.0.0.1:{port}", key="k", secret="s", region="us-east-1",
                            retry_attempts=1)
    for read in (read_rgb, try_read_rgb):
        with pytest.raises(StoreUnavailable, match=r"s3://images/x\.png"):
            read("s3://images/x.png", InputConfig(storage=storage))
