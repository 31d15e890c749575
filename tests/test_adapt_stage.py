"""AdaptStage: batches of exactly B good images, rankings without a second forward, restore, and the job."""
import shutil
from collections import Counter

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from broken import write_broken_files
from rayiqa.config import ConfigError, LLMIQAConfig, MLLMConfig, ScoreConfig, load_config
from rayiqa.config.tta import AdaptConfig, TTAParams
from rayiqa.io.samples import samples_dir
from rayiqa.methods import llm_tta
from rayiqa.methods.llm_tta import prompt2, to_batch_tensor
from rayiqa.pipeline.adapt import AdaptStage, pack_rows, plan_batches
from rayiqa.pipeline.score_job import run_score

TINY_MLLM = MLLMConfig(preset="tiny", max_pixels=12544)


def _lists(plan):
    return [(m.tolist(), w.tolist()) for m, w in plan]


def test_plan_batches_exact_b_with_context_fill_and_one_short_case():
    assert _lists(plan_batches(16, 8)) == [(list(range(8)), list(range(8))), (list(range(8, 16)), list(range(8, 16)))]
    # 20 = 8 + 8 + 4: the last 4 are adapted with the 4 images before them as context
    assert _lists(plan_batches(20, 8))[2] == (list(range(12, 20)), [16, 17, 18, 19])
    assert _lists(plan_batches(9, 8)) == [(list(range(8)), list(range(8))), (list(range(1, 9)), [8])]
    assert _lists(plan_batches(5, 8)) == [([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])]  # the one short case
    assert plan_batches(0, 8) == []
    for n in range(8, 40):  # every position written once, every batch exactly B
        plan = plan_batches(n, 8)
        assert sorted(p for _, w in plan for p in w.tolist()) == list(range(n))
        assert all(len(m) == 8 and set(w.tolist()) <= set(m.tolist()) for m, w in plan)


def test_adapt_config_rejects_batches_too_small_for_the_clusters():
    with pytest.raises(ConfigError, match="adapt"):
        load_config(ScoreConfig, None, ["adapt.batch=3"])
    with pytest.raises(ConfigError, match="stage.batch_size"):
        load_config(ScoreConfig, None, ["adapt.stage.batch_size=4"])
    assert load_config(ScoreConfig).adapt.method == "none"  # the plain job is unchanged by default


def test_job_and_serve_share_one_tta_parameter_object_with_documented_keys():
    import yaml

    from rayiqa.config.serve import ServeConfig
    from rayiqa.scorers.llm_tta import LLMTTAScorerConfig

    knobs = set(TTAParams.model_fields)
    assert issubclass(AdaptConfig, TTAParams) and issubclass(LLMTTAScorerConfig, TTAParams)
    assert yaml.safe_load(open("configs/score.yaml"))["adapt"].keys() >= knobs  # every knob documented, one name each
    assert yaml.safe_load(open("configs/serve.yaml"))["models"]["tta-tiny-cnn"].keys() >= knobs
    with pytest.raises(ConfigError, match=r"adapt\.tau: .*tau=0"):
        load_config(ScoreConfig, None, ["adapt.tau=0"])
    with pytest.raises(ConfigError, match=r"models\.tta-tiny-cnn\..*n_iter: unknown key"):
        load_config(ServeConfig, "configs/serve.yaml", ["models.tta-tiny-cnn.n_iter=3"])


def _batch(n, errors=(), seed=0):
    rng = np.random.default_rng(seed)
    images = np.empty(n, dtype=object)
    images[:] = [rng.integers(0, 256, (rng.integers(40, 90), rng.integers(40, 90), 3), dtype=np.uint8) for _ in range(n)]
    kinds = np.array(["truncated" if i in errors else "" for i in range(n)], dtype=object)
    # LLM-IQA scores of the job: global + local, a known ranking
    glob = np.array([float((7 * i) % n) for i in range(n)], dtype=object)
    loc = np.array([0.5] * n, dtype=object)
    return {"path": np.array([f"img{i}" for i in range(n)], dtype=object), "image": images, "error_kind": kinds,
            "global_score_m0": glob, "local_score_m0": loc}


def test_stage_uses_the_jobs_llm_iqa_ranking_and_restores_the_source():
    cfg = AdaptConfig(method="llm-tta", image_size=64, iterations=3)
    stage = AdaptStage(cfg, [TINY_MLLM], LLMIQAConfig(lam=2.0))
    source = {k: v.clone() for k, v in stage.backbone.state_dict().items()}
    batch = _batch(13, errors={2, 7})
    expected_rank = [float(batch["global_score_m0"][i]) + 2.0 * 0.5 for i in range(13)]
    good = [i for i in range(13) if i not in (2, 7)]
    out = stage(pack_rows(batch))

    for i in (2, 7):  # error rows pass through with no tta values
        assert all(out[c][i] is None for c in ("tta_score", "tta_base_score", "tta_cluster", "tta_batch"))
    assert [out["tta_ranker_score"][i] for i in good] == pytest.approx([expected_rank[i] for i in good])
    batches = Counter(out["tta_batch"][i] for i in good)
    assert sorted(batches.values()) == [3, 8]  # 11 good = 8 + 3 written from a batch completed with 5 context images
    first = [i for i in good if out["tta_batch"][i] == out["tta_batch"][good[0]]]
    ranks = sorted(first, key=lambda i: -expected_rank[i])
    assert {i for i in first if out["tta_cluster"][i] == "high"} == set(ranks[:2])
    assert {i for i in first if out["tta_cluster"][i] == "low"} == set(ranks[-2:])
    last = [i for i in good if i not in first]
    assert {out["tta_note"][i] for i in last} == {"completed with 5 context images"}
    # base scores are the source model's on the resized images; adaptation moved the scores
    x = to_batch_tensor([batch["image"][i] for i in first], 64)
    assert [out["tta_base_score"][i] for i in first] == pytest.approx(llm_tta.predict(stage.backbone, x).tolist(), abs=1e-6)
    assert not np.allclose([out["tta_score"][i] for i in first], [out["tta_base_score"][i] for i in first])
    assert all(np.isfinite(out["tta_final_loss"][i]) for i in good)
    # after two adapted batches the backbone's state is the source state exactly
    state = stage.backbone.state_dict()
    assert state.keys() == source.keys() and all(torch.equal(state[k], source[k]) for k in source)


def test_short_window_keeps_base_scores_and_says_why():
    stage = AdaptStage(AdaptConfig(method="tta-iqa", image_size=64, iterations=2), [TINY_MLLM], LLMIQAConfig())
    out = stage(pack_rows(_batch(6, errors={0})))
    notes = {out["tta_note"][i] for i in range(1, 6)}
    assert notes == {"short batch: 5 images < B=8; base scores kept"}
    assert [out["tta_score"][i] for i in range(1, 6)] == [out["tta_base_score"][i] for i in range(1, 6)]
    assert all(out["tta_cluster"][i] is None and out["tta_final_loss"][i] is None for i in range(6))


def test_prompt2_ranker_is_p_good_of_the_same_engine_class():
    from rayiqa.models.mllm import LevelRequest, create_engine

    stage = AdaptStage(AdaptConfig(method="llm-tta", ranker="prompt2", image_size=64, iterations=1),
                       [TINY_MLLM], LLMIQAConfig())
    batch = _batch(8)
    out = stage(pack_rows(batch))
    probs = create_engine(TINY_MLLM).level_probs([LevelRequest(prompt2(), [im]) for im in batch["image"]])
    assert probs.shape == (8, 2)
    assert [out["tta_ranker_score"][i] for i in range(8)] == pytest.approx(probs[:, 0].tolist(), abs=1e-6)
    assert prompt2().assistant_prefix == llm_tta.PROMPT_2


FAST = [
    "method.segmentation=false",
    "mllms=[{preset: tiny, max_pixels: 12544}]",
    "decode.batch_size=4",
    "score.batch_size=4",
    "adapt.method=llm-tta",
    "adapt.image_size=64",
    "adapt.iterations=3",
    "adapt.stage.batch_size=16",
]


def test_job_adapts_every_good_image_in_batches_of_8_and_keeps_error_rows(ray_local, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    names = sorted(p.name for p in samples_dir().iterdir() if p.suffix in (".jpg", ".png"))[:13]
    for name in names:
        shutil.copy(samples_dir() / name, src / name)
    broken = write_broken_files(src / "broken")  # 8 bad files: 21 inputs = windows of 16 + 5 rows
    cfg = load_config(ScoreConfig, None, [f"input.uri={src}", f"output.uri={tmp_path / 'out'}", *FAST])
    run_score(cfg)
    rows = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()
    assert len(rows) == len(names) + len(broken)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    for name, kind in broken.items():
        r = by_name[name]
        assert r["error_kind"] == kind and r["tta_score"] is None and r["tta_batch"] is None
    good = [by_name[n] for n in names]
    assert all(r["tta_score"] is not None and r["tta_method"] == "llm-tta" for r in good)
    # the job's own LLM-IQA score (whole image only here: s = s_global), ranked on and written unchanged
    assert all(r["tta_ranker_score"] == pytest.approx(r["global_score"]) for r in good)
    assert all(r["local_score"] is None and r["score"] == pytest.approx(r["global_score"]) for r in good)
    groups: dict[str, list[dict]] = {}
    for r in good:
        groups.setdefault(r["tta_batch"], []).append(r)
    short = [g for g in groups.values() if g[0]["tta_note"] and g[0]["tta_note"].startswith("short batch")]
    assert len(short) == 1 and len(short[0]) <= 5  # only the last window of 5 rows is short
    for g in groups.values():
        if g in short:
            continue
        note = g[0]["tta_note"]
        assert len(g) == 8 or note == f"completed with {8 - len(g)} context images"
        written = [r for r in g if r["tta_cluster"]]
        assert Counter(r["tta_cluster"] for r in written) <= Counter({"high": 2, "low": 2})
        if len(g) == 8:  # a full batch: top-2 / bottom-2 by the LLM-IQA score, one final loss
            ranked = sorted(g, key=lambda r: -r["global_score"])
            assert {r["path"] for r in g if r["tta_cluster"] == "high"} == {r["path"] for r in ranked[:2]}
            assert {r["path"] for r in g if r["tta_cluster"] == "low"} == {r["path"] for r in ranked[-2:]}
            assert len({r["tta_final_loss"] for r in g}) == 1
