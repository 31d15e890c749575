"""The KADID-style synthetic generator, its FR labels, and loading it back through the registry."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage import img_as_float

from rayiqa.data import DatasetError, load_dataset, make_synthetic_set, reference_split
from rayiqa.data.distortions import DISTORTIONS, level_params
from rayiqa.data.fr_metrics import PSNR_CAP_DB, gmsd, psnr, ssim
from rayiqa.data.synthetic import fr_labels

LEVELS = 5
BRIEF_TYPES = {"gaussian_blur", "motion_blur", "gaussian_noise", "jpeg", "contrast", "brightness", "saturation",
               "pixelation"}


@pytest.fixture(scope="module")
def pristine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real colour photos bundled with scikit-image, made small."""
    src = tmp_path_factory.mktemp("pristine")
    Image.fromarray(skimage.data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS).save(src / "astronaut.png")
    Image.fromarray(skimage.data.coffee()).resize((144, 96), Image.Resampling.LANCZOS).save(src / "coffee.png")
    (src / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return src


@pytest.fixture(scope="module")
def generated(pristine_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, make_synthetic_set(pristine_dir, out, levels=LEVELS, seed=0)


def test_every_image_type_and_level_is_written(generated: tuple[Path, list]) -> None:
    out, rows = generated
    assert set(DISTORTIONS) >= BRIEF_TYPES
    assert len(rows) == 2 * len(DISTORTIONS) * LEVELS
    assert {(r.ref_id, r.distortion, r.level) for r in rows} == {
        (ref, t, level) for ref in ("astronaut", "coffee") for t in DISTORTIONS for level in range(1, LEVELS + 1)}
    assert all(Path(r.image).is_file() and Path(r.image).parent == out / "distorted" for r in rows)
    assert (out / "reference" / "astronaut.png").is_file()


def test_stronger_distortion_lowers_ssim_and_psnr(generated: tuple[Path, list]) -> None:
    _, rows = generated
    curves: dict[tuple[str, str], list] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r.level):
        curves[(r.ref_id, r.distortion)].append(r.labels)
    for key, labels in curves.items():
        for metric in ("ssim", "psnr"):
            values = [lab[metric] for lab in labels]
            assert all(a > b for a, b in zip(values, values[1:])), (key, metric, values)
        gmsd_values = [lab["gmsd"] for lab in labels]
        assert all(a < b for a, b in zip(gmsd_values, gmsd_values[1:])), (key, "gmsd", gmsd_values)


def test_labels_match_the_images_on_disk(generated: tuple[Path, list]) -> None:
    out, rows = generated
    for r in rows[:: len(rows) // 8]:
        reference = np.asarray(Image.open(out / "reference" / f"{r.ref_id}.png"))
        distorted = np.asarray(Image.open(r.image))
        recomputed = fr_labels(reference, distorted)
        assert {k: r.labels[k] for k in recomputed} == pytest.approx(recomputed, abs=1e-12)


def test_inverted_requirements(generated: tuple[Path, list]) -> None:
    _, rows = generated
    for r in rows:
        assert r.labels["ssim_inv"] == pytest.approx(1.0 - r.labels["ssim"])
        assert r.labels["psnr_inv"] == pytest.approx(PSNR_CAP_DB - r.labels["psnr"])
        assert r.labels["gmsd_inv"] == pytest.approx(0.5 - r.labels["gmsd"])


def test_deterministic_for_a_seed(pristine_dir: Path, generated: tuple[Path, list], tmp_path: Path) -> None:
    out, rows = generated
    again = make_synthetic_set(pristine_dir, tmp_path / "same", types=["gaussian_noise", "motion_blur", "jpeg"],
                               levels=LEVELS, seed=0)
    other = make_synthetic_set(pristine_dir, tmp_path / "other", types=["gaussian_noise", "motion_blur", "jpeg"],
                               levels=LEVELS, seed=1)
    for name in ("astronaut_gaussian_noise_03.png", "astronaut_motion_blur_05.png", "coffee_jpeg_02.png"):
        first = np.asarray(Image.open(out / "distorted" / name))
        assert np.array_equal(first, np.asarray(Image.open(tmp_path / "same" / "distorted" / name))), name
        changed = not np.array_equal(first, np.asarray(Image.open(tmp_path / "other" / "distorted" / name)))
        assert changed == (not name.startswith("coffee_jpeg")), name  # only random types depend on the seed
    labels = {(r.ref_id, r.distortion, r.level): r.labels for r in rows}
    assert all(r.labels == labels[(r.ref_id, r.distortion, r.level)] for r in again)
    assert len(other) == len(again) == 2 * 3 * LEVELS


def test_loads_back_through_the_registry(generated: tuple[Path, list]) -> None:
    out, rows = generated
    assert load_dataset("synthetic", str(out)) == rows
    by_psnr = load_dataset("synthetic", str(out), label="psnr")
    assert [r.score for r in by_psnr] == [r.labels["psnr"] for r in rows]
    assert {(r.score_type, r.score_range) for r in by_psnr} == {("MOS", (0.0, PSNR_CAP_DB))}
    by_gmsd = load_dataset("synthetic", str(out), label="gmsd")
    assert {(r.score_type, r.score_range) for r in by_gmsd} == {("DMOS", (0.0, 0.5))}
    assert {r.score_type for r in load_dataset("synthetic", str(out), label="ssim_inv")} == {"DMOS"}
    split = reference_split(rows, seed=0)
    assert {r.ref_id for r in split.train}.isdisjoint({r.ref_id for r in split.test})


def test_unknown_label_lists_the_choices(generated: tuple[Path, list]) -> None:
    out, _ = generated
    with pytest.raises(DatasetError, match=r"unknown label 'lpips'; choose one of \['gmsd', 'gmsd_inv', 'psnr'"):
        load_dataset("synthetic", str(out), label="lpips")


def test_bad_generator_inputs(pristine_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown distortion 'rain'; known: gaussian_blur"):
        make_synthetic_set(pristine_dir, tmp_path / "a", types=["rain"])
    with pytest.raises(DatasetError, match="levels must be >= 1"):
        make_synthetic_set(pristine_dir, tmp_path / "b", types=["jpeg"], levels=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        make_synthetic_set(tmp_path / "empty", tmp_path / "c")
    dup = tmp_path / "dup"
    dup.mkdir()
    for ext in ("png", "bmp"):
        Image.new("RGB", (8, 8)).save(dup / f"same.{ext}")
    with pytest.raises(DatasetError, match=r"share the name\(s\) \['same'\]"):
        make_synthetic_set(dup, tmp_path / "d")


def test_level_params_known_values() -> None:
    assert level_params("gaussian_blur", 5) == pytest.approx([0.5, 1.375, 2.25, 3.125, 4.0])
    assert level_params("jpeg", 5) == [50.0, 38.0, 26.0, 15.0, 3.0]
    assert level_params("contrast", 1) == [0.75]


def test_fr_metric_known_answers() -> None:
    flat = np.full((32, 32, 3), 0.5)
    shifted = flat + 0.1
    assert psnr(flat, shifted) == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(1 / 0.01)
    assert psnr(flat, flat) == PSNR_CAP_DB and ssim(flat, flat) == 1.0
    assert gmsd(flat, shifted) == 0.0  # no gradients anywhere: GMS = 1 everywhere
    photo = img_as_float(np.asarray(Image.fromarray(skimage.data.astronaut()).resize((64, 64))))
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 0.1, photo.shape), 0, 1)
    assert gmsd(photo, photo) == 0.0
    assert gmsd(photo, noisy) == pytest.approx(gmsd(noisy, photo))  # GMS is symmetric
    assert 0.0 < gmsd(photo, noisy) < 0.5 and 0.0 < ssim(photo, noisy) < 1.0
    assert math.isclose(psnr(photo, noisy), psnr(noisy, photo))
