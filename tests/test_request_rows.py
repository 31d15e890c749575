"""The ray.data.llm path's glue (explode -> processor per MLLM -> regroup) gives the same rows as the
in-process path when its processor is the transformers engine (vLLM itself: tests/vllm/)."""
import numpy as np
import pyarrow.dataset as pads
import pytest

from broken import write_broken_files
from rayiqa.config import ScoreConfig, load_config
from rayiqa.pipeline import score_job
from rayiqa.pipeline.request_rows import explode_requests
from standins import transformers_processor
from test_score_job import FAST, _copy_samples


def test_explode_orders_requests_and_keeps_error_rows():
    image = np.zeros((10, 12, 3), np.uint8)
    image[2:5, 3:9] = 200
    row = {
        "path": "a.jpg", "width": 12, "height": 10, "error_kind": "", "error": "",
        "boxes": np.array([[3, 2, 9, 5], [0, 0, 12, 10]], np.int32), "areas": np.array([18, 102]),
        "masks": np.zeros((0, 0), np.uint8), "image": image,
    }
    reqs = explode_requests(row)
    assert [r["req_index"] for r in reqs] == [0, 1, 2]
    assert reqs[0]["image"].shape == (10, 12, 3) and reqs[1]["image"].shape == (3, 6, 3)
    assert (reqs[1]["image"] == 200).all() and reqs[2]["image"].shape == (10, 12, 3)
    bad = explode_requests({**row, "error_kind": "truncated", "error": "x"})
    assert len(bad) == 1 and bad[0]["error_kind"] == "truncated"


def test_request_row_path_matches_in_process_path(ray_local, tmp_path, monkeypatch):
    src = tmp_path / "in"
    _copy_samples(src, 3)
    broken = write_broken_files(src / "broken")
    base = [f"input.uri={src}", *FAST]
    in_process = load_config(ScoreConfig, None, [*base, f"output.uri={tmp_path / 'a'}"])
    score_job.run_score(in_process)
    monkeypatch.setattr("rayiqa.models.mllm.vllm_engine.build_vllm_processor", transformers_processor)
    by_requests = load_config(
        ScoreConfig, None, [*base, f"output.uri={tmp_path / 'b'}", "mllms=[{preset: tiny, engine: vllm, max_pixels: 12544}]"]
    )
    summary = score_job.run_score(by_requests)
    a = {r["path"]: r for r in pads.dataset(str(tmp_path / "a")).to_table().to_pylist()}
    b = {r["path"]: r for r in pads.dataset(str(tmp_path / "b")).to_table().to_pylist()}
    assert summary.rows == len(b) == len(a) == 3 + len(broken)
    for path, row in a.items():
        assert b[path]["error_kind"] == row["error_kind"]
        assert b[path]["crop_boxes"] == row["crop_boxes"]
        if row["score"] is None:
            assert b[path]["score"] is None
        else:
            assert b[path]["score"] == pytest.approx(row["score"], abs=1e-4)
            np.testing.assert_allclose(b[path]["crop_probs"], row["crop_probs"], atol=1e-5)
