"""The scoring job end to end on a real local Ray: one row per input, errors named, resume, ensemble."""
import json
import shutil

import numpy as np
import pyarrow.dataset as pads
import pytest

from broken import write_broken_files, write_tricky_files
from rayiqa.config import ScoreConfig, load_config
from rayiqa.io.samples import samples_dir
from rayiqa.pipeline.score_job import run_score

FAST = [
    "segmenter.image_size=256",
    "segmenter.points_per_side=4",
    "segmenter.pred_iou_thresh=0",
    "segmenter.stability_score_thresh=0",
    "method.area_threshold=0.05",
    "mllms=[{preset: tiny, max_pixels: 12544}]",
    "decode.batch_size=4",
    "segment.batch_size=2",
    "score.batch_size=4",
]


def _cfg(tmp_path, src, *extra) -> ScoreConfig:
    return load_config(ScoreConfig, None, [f"input.uri={src}", f"output.uri={tmp_path / 'out'}", *FAST, *extra])


def _read(out):
    return pads.dataset(str(out), format="parquet").to_table().to_pylist()


def _copy_samples(dst, n):
    dst.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in samples_dir().iterdir() if p.suffix.lower() in (".jpg", ".png"))[:n]
    for name in names:
        shutil.copy(samples_dir() / name, dst / name)
    return names


def _check_scored_row(row, n_models=1, lam=1.0):
    assert row["error_kind"] is None and row["error"] is None
    n_crops = len(row["crop_boxes"])
    assert n_crops >= 1 and len(row["crop_areas"]) == n_crops
    assert sum(row["crop_weights"]) == pytest.approx(1.0)
    assert len(row["model_scores"]) == n_models == len(row["global_probs"])
    values = np.arange(1, 8)
    s_k = []
    for k in range(n_models):
        g = np.asarray(row["global_probs"][k])
        assert g.shape == (7,) and g.sum() == pytest.approx(1.0)
        crop_probs = np.asarray(row["crop_probs"][k])
        assert crop_probs.shape == (n_crops, 7)
        crop_scores = crop_probs @ values
        assert row["crop_scores"][k] == pytest.approx(crop_scores.tolist())
        s_local = np.dot(crop_scores, np.asarray(row["crop_areas"]) / np.sum(row["crop_areas"]))
        s_k.append(g @ values + lam * s_local)
    assert row["model_scores"] == pytest.approx(s_k)
    assert np.isfinite(row["score"]) and row["score"] == pytest.approx(np.mean(s_k))
    for x0, y0, x1, y1 in row["crop_boxes"]:
        assert 0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]


@pytest.mark.parametrize("generator", ["fast", "sam2"])
def test_job_scores_samples_and_names_each_broken_file(ray_local, tmp_path, generator):
    src = tmp_path / "in"
    good = _copy_samples(src, 4)
    broken = write_broken_files(src / "broken")
    tricky = write_tricky_files(src / "tricky")
    summary = run_score(_cfg(tmp_path, src, f"segmenter.generator={generator}"))
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in _read(tmp_path / "out")}
    inputs = [p for p in src.rglob("*") if p.is_file()]
    assert len(rows) == summary.rows == summary.unique_paths == len(inputs)
    for name in good:
        _check_scored_row(rows[name])
    for name, kind in broken.items():
        assert rows[name]["error_kind"] == kind and rows[name]["score"] is None and rows[name]["error"]
    # an error row keeps the size its header gave: the truncated 64 x 64 files and the 9000^2 bomb
    assert (rows["truncated.png"]["width"], rows["truncated.png"]["height"]) == (64, 64)
    assert (rows["bomb_9000.png"]["width"], rows["bomb_9000.png"]["height"]) == (9000, 9000)
    assert (rows["empty.jpg"]["width"], rows["empty.jpg"]["height"]) == (0, 0)
    for name, expected in tricky.items():  # odd modes (CMYK, 16-bit, palette, EXIF...) are scored
        _check_scored_row(rows[name])
        assert (rows[name]["height"], rows[name]["width"]) == expected.shape[:2]
    n_err = len(broken)
    assert sum(summary.errors.values()) == n_err and summary.scored == len(inputs) - n_err
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["weights"] == "random-init"
    assert manifest["summary"]["rows"] == len(inputs) and manifest["versions"]["ray"]


def test_rerun_resumes_and_scores_only_new_images(ray_local, tmp_path):
    src = tmp_path / "in"
    _copy_samples(src, 3)
    cfg = _cfg(tmp_path, src, "method.segmentation=false")
    first = run_score(cfg)
    before = {r["path"]: r["score"] for r in _read(tmp_path / "out")}
    again = run_score(cfg)
    assert again.new_rows == 0 and again.rows == first.rows == 3
    for name in sorted(p.name for p in samples_dir().iterdir() if p.suffix.lower() == ".jpg")[-2:]:
        shutil.copy(samples_dir() / name, src / name)
    third = run_score(cfg)
    rows = _read(tmp_path / "out")
    assert third.new_rows == 2 and len(rows) == 5 == len({r["path"] for r in rows})
    assert all(before[r["path"]] == r["score"] for r in rows if r["path"] in before)


def test_two_model_ensemble_averages_and_whole_image_mode(ray_local, tmp_path):
    src = tmp_path / "in"
    _copy_samples(src, 2)
    cfg = _cfg(tmp_path, src, "method.segmentation=false", "mllms=[{preset: tiny, max_pixels: 12544}, {preset: tiny, max_pixels: 50176}]")
    run_score(cfg)
    for row in _read(tmp_path / "out"):
        assert row["crop_boxes"] == [] and row["local_score"] is None
        assert len(row["model_scores"]) == 2
        assert row["model_scores"] == pytest.approx([np.asarray(p) @ np.arange(1, 8) for p in row["global_probs"]])
        assert np.isfinite(row["score"]) and row["score"] == pytest.approx(np.mean(row["model_scores"]))
        assert row["model_scores"][0] != pytest.approx(row["model_scores"][1])  # different resize -> different input


def test_a_model_out_of_memory_is_retried_not_written_as_error_rows(ray_local, tmp_path, monkeypatch):
    """The model fails once (device out of memory) on a block: Ray Data re-runs that block and every
    image is scored; no image pays for the model's failure with a model_error row."""
    from standins import OOM_ONCE_MARKER, OutOfMemoryOnceScoreStage

    from rayiqa.pipeline import stages

    OOM_ONCE_MARKER.unlink(missing_ok=True)
    monkeypatch.setattr(stages, "ScoreStage", OutOfMemoryOnceScoreStage)  # the class the job's pool runs
    cfg = load_config(ScoreConfig, None, ["input.uri=builtin:samples", "input.limit=6", f"output.uri={tmp_path / 'out'}",
                                          *FAST, "method.segmentation=false", "score.batch_size=2"])
    try:
        summary = run_score(cfg)
    finally:
        failed_once = OOM_ONCE_MARKER.exists()
        OOM_ONCE_MARKER.unlink(missing_ok=True)
    assert failed_once  # the model did fail on a block
    rows = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(set(r["path"] for r in rows)) and len(rows) == 6
    assert all(r["error_kind"] is None and np.isfinite(r["score"]) for r in rows), [r["error"] for r in rows]
    assert summary.scored == summary.new_rows == 6
