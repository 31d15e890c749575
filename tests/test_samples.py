"""The bundled samples: every image labelled, labels recomputable, distortion levels ordered, script reproducible."""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from rayiqa.io.decode import decode_image
from rayiqa.io.samples import samples_dir

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_samples.py"


def _labels(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_sample_is_labelled_and_decodes():
    folder = samples_dir()
    rows = _labels(folder)
    images = sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    assert sorted(r["path"] for r in rows) == images and 24 <= len(images) <= 40
    assert sum(p.stat().st_size for p in folder.iterdir()) < 3_000_000
    for name in images:
        res = decode_image((folder / name).read_bytes(), 64_000_000)
        assert res.ok and max(res.width, res.height) == 384, name


def test_labels_match_an_independent_ssim_and_order_by_level():
    folder = samples_dir()
    rows = _labels(folder)
    pristine = {r["source"]: r["path"] for r in rows if r["level"] == "0"}
    assert all(float(r["ssim"]) == 1.0 and math.isinf(float(r["psnr"])) for r in rows if r["level"] == "0")
    for r in rows[1:4]:
        ref = np.asarray(Image.open(folder / pristine[r["source"]]).convert("RGB"))
        test = np.asarray(Image.open(folder / r["path"]).convert("RGB"))
        assert abs(structural_similarity(ref, test, channel_axis=-1, data_range=255) - float(r["ssim"])) < 1e-5
        mse = np.mean((ref.astype(float) - test) ** 2)
        assert abs(10 * math.log10(255**2 / mse) - float(r["psnr"])) < 1e-3  # PSNR by its definition
    by_key = {(r["source"], r["distortion"], int(r["level"])): float(r["ssim"]) for r in rows}
    for (source, distortion, level), ssim in by_key.items():
        if level == 2:  # the strong level is worse than the mild one, which is worse than pristine
            assert ssim < by_key[(source, distortion, 1)] < 1.0, (source, distortion)


def test_make_samples_reproduces_the_bundled_folder(tmp_path):
    spec = importlib.util.spec_from_file_location("make_samples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_samples(tmp_path)
    assert (tmp_path / "labels.csv").read_text() == (samples_dir() / "labels.csv").read_text()
    for png in samples_dir().glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / png.name)))
