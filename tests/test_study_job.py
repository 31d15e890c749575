"""The study job: request design, scores from answers, and the end-to-end run on the tiny engine."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from rayiqa.config import ConfigError, load_config
from rayiqa.config.study import STUDY_SYSTEMS, DesignConfig, StudyConfig
from rayiqa.methods import study_prompts as sp
from rayiqa.methods.psychophysics import sample_active_pairs
from rayiqa.pipeline import study

SMALL_DESIGN = {"pairs_per_item": 1, "lists_per_item": 1, "list_size": 3, "max_new_tokens": 2}
# 4 sample images: astronaut.png (the pristine reference, NR only) + 3 distorted astronauts (NR and FR)
PER_SYSTEM = {("nr", "single"): 4, ("nr", "double"): 4, ("nr", "multiple"): 4,
              ("fr", "single"): 3, ("fr", "double"): 3, ("fr", "multiple"): 3}


def _config(tmp_path, **design) -> StudyConfig:
    raw = {
        "data": {"limit": 4},
        "design": {**SMALL_DESIGN, **design},
        "mllms": [{"preset": "tiny", "device": "cpu", "min_pixels": 784, "max_pixels": 3136, "batch_size": 4}],
        "stage": {"batch_size": 8, "num_cpus": 0.5},
        "output": {"uri": str(tmp_path / "out")},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(StudyConfig, path)


def test_systems_list_matches_the_prompts_module() -> None:
    assert STUDY_SYSTEMS == sp.SYSTEMS


def test_requests_follow_the_design(tmp_path) -> None:
    cfg = _config(tmp_path)
    items = study.load_items(cfg)
    assert [it.reference is None for it in items] == [True, False, False, False]
    rows = study.build_requests(cfg, items)
    counts = pd.DataFrame(rows).groupby(["scenario", "system"]).size()
    for (scenario, system), n in counts.items():
        assert n == PER_SYSTEM[(scenario, system.split("-")[0])], (scenario, system)
    for r in rows:
        stimulus, prompting = sp.split_system(r["system"])
        assert len(r["items"]) == {"single": 1, "double": 2, "multiple": 3}[stimulus]
        assert len(set(r["item_index"])) == len(r["item_index"])
        assert (r["reference"] != "") == (r["scenario"] == "fr")
        assert len(r["exemplar_answers"]) == (1 if prompting == "in_context" else 0)
        if r["scenario"] == "fr":  # same content: every test image and exemplar shares the reference
            assert all(items[i].reference == r["reference"] for i in r["item_index"])
            assert all(ex[0] == r["reference"] for ex in r["exemplar_paths"])


def test_unknown_system_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="design.systems"):
        load_config(StudyConfig, None, ["design.systems=[single-standard, triple-standard]"])


def _answers(system: str, rows: list[tuple[list[int], str | None, float | None, bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"engine": "e", "scenario": "nr", "system": system, "item_index": ix, "answer": a, "score": s, "failed": f}
         for ix, a, s, f in rows]
    )


def test_scores_and_srcc_from_hand_made_answers() -> None:
    items = [study.StudyItem(f"im{k}", float(k + 1), None, "c", {}) for k in range(4)]
    single = _answers("single-standard", [
        ([0], "2", 10.0, False), ([1], "3", 20.0, False), ([1], "5", 40.0, False),
        ([2], None, None, True), ([3], "9", 90.0, False),
    ])
    np.testing.assert_allclose(study.system_scores(single, 4, DesignConfig()), [10.0, 30.0, np.nan, 90.0])
    double = _answers("double-standard", [
        ([1, 0], "i", None, False), ([2, 1], "i", None, False), ([3, 2], "i", None, False),
        ([0, 3], "j", None, False), ([0, 1], None, None, True),
    ])
    mu = study.system_scores(double, 4, DesignConfig())
    assert np.all(np.diff(mu) > 0) and abs(mu.sum()) < 1e-6  # Thurstone MAP: order of the chain, sum 0
    failed = _answers("multiple-standard", [([0, 1, 2], None, None, True)])
    table = {r["system"]: r for r in study.summarise(pd.concat([single, double, failed]), items, DesignConfig())}
    assert table["single-standard"]["srcc"] == pytest.approx(1.0) and table["single-standard"]["n_failed"] == 1
    assert table["double-standard"]["srcc"] == pytest.approx(1.0) and table["double-standard"]["n_items"] == 4
    assert math.isnan(table["multiple-standard"]["srcc"]) and "at least 3" in table["multiple-standard"]["error"]


def test_active_pass_asks_the_most_informative_pairs(tmp_path) -> None:
    cfg = _config(tmp_path, active_pairs=2)
    base = {"engine": "tiny", "engine_index": 0, "scenario": "nr", "prompt_id": "p", "reference": "",
            "exemplar_paths": [], "exemplar_answers": [], "failed": False}
    first = [([0, 1], "i"), ([1, 2], "i"), ([0, 1], "i"), ([2, 3], "tie"), ([3, 0], "j")]
    answers = pd.DataFrame(
        [{**base, "system": "double-standard", "item_index": ix, "items": [f"im{i}" for i in ix], "answer": a}
         for ix, a in first]
        + [{**base, "system": "single-standard", "item_index": [0], "items": ["im0"], "answer": "5"},
           {**base, "scenario": "fr", "system": "double-standard", "item_index": [1, 2], "items": ["im1", "im2"],
            "answer": "i"}]
    )
    rows = study.active_requests(cfg, 4, answers, first_id=100)
    C = np.zeros((4, 4))
    C[0, 1], C[1, 2], C[2, 3], C[3, 2], C[0, 3] = 2.0, 1.0, 0.5, 0.5, 1.0  # the answers above, by hand
    expected = sample_active_pairs(C, 2)
    assert [r["item_index"] for r in rows] == expected.tolist()
    assert [r["items"] for r in rows] == [[f"im{a}", f"im{b}"] for a, b in expected]
    assert [r["request_id"] for r in rows] == [100, 101]
    assert all(r["system"] == "double-standard" and r["scenario"] == "nr" and r["engine"] == "tiny" for r in rows)


def test_job_runs_all_nine_systems_on_the_tiny_engine(ray_local, tmp_path) -> None:
    cfg = _config(tmp_path, active_pairs=2)
    summary = study.run_study(cfg)
    out = tmp_path / "out"
    answers = pq.read_table(out / "answers").to_pandas()
    active = 2 * 3  # two active pairs for each NR double-stimulus system
    assert len(answers) == sum(3 * n for n in PER_SYSTEM.values()) + active == summary.requests
    assert sorted(answers["request_id"]) == list(range(len(answers)))
    for (scenario, system), group in answers.groupby(["scenario", "system"]):
        stimulus, _ = sp.split_system(system)
        assert len(group) == PER_SYSTEM[(scenario, stimulus)] + (2 if (scenario, stimulus) == ("nr", "double") else 0)
        assert not group["failed"].any()
        steps = {"single": 1, "double": 1, "multiple": 2}[stimulus]
        for probs in group["answer_probs"]:
            assert len(probs) == steps
            assert all(abs(sum(p) - 1.0) < 1e-9 for p in probs)
        assert group["rationale"].notna().all() == system.endswith("chain_of_thought")
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 9 * 2 * 1  # systems x scenarios x engines
    assert set(table["system"]) == set(STUDY_SYSTEMS) and set(table["engine"]) == {"tiny"}
    assert all(np.isfinite(s) or isinstance(e, str) and e for s, e in zip(table["srcc"], table["error"]))
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "random-init" in summary.render()


def _minmax(v: np.ndarray) -> np.ndarray:
    return (v - v.min()) / (v.max() - v.min())


def test_difficult_subset_is_eq5_on_the_samples() -> None:
    cfg = load_config(StudyConfig, None, ["subset.n=5", "subset.lam=0"])
    everything = study._samples_items(cfg.data)
    chosen = study.load_items(cfg)
    # with lambda = 0, Eq. (5) is the top-5 of (q_w - q)^2 / (sigma^2 + 1), computed here by hand
    psnr = np.array([it.labels["psnr"] for it in everything])
    psnr[~np.isfinite(psnr)] = psnr[np.isfinite(psnr)].max()
    q = _minmax(np.array([it.mos for it in everything]))
    error = (_minmax(psnr) - q) ** 2 / (0.0 + 1.0)
    expected = sorted(np.argsort(-error, kind="stable")[:5].tolist())
    assert [it.path for it in chosen] == [everything[i].path for i in expected]
    # with the diversity term, still 5 distinct images and the first pick is the largest error
    diverse = study.load_items(load_config(StudyConfig, None, ["subset.n=5"]))
    assert len({it.path for it in diverse}) == 5
    assert everything[int(np.argmax(error))].path in {it.path for it in diverse}
