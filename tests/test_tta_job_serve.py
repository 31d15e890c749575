"""The scoring job's adapter stage and Serve's TTA model give the same batch the same LLM-TTA scores:
one `TTAParams`, one batch tensor, one prompt-2 ranking, on a real local Ray."""
import shutil

import pyarrow.dataset as pads
import pytest
import torch

from rayiqa.config import ScoreConfig, load_config
from rayiqa.config.serve import DeploymentConfig, ScorerModelConfig
from rayiqa.config.tta import TTAParams
from rayiqa.io.decode import decode_image
from rayiqa.io.samples import samples_dir
from rayiqa.models.backbones import create_backbone
from rayiqa.pipeline.score_job import run_score

JOB = [
    "method.segmentation=false",
    "mllms=[{preset: tiny, max_pixels: 12544}]",
    "decode.batch_size=8",
    "score.batch_size=8",
    "adapt.method=llm-tta",
    "adapt.backbone=tiny-cnn",
    "adapt.ranker=prompt2",  # the ranking Serve has: p(good) after prompt 2
    "adapt.image_size=64",
    "adapt.iterations=3",
    "adapt.lr=0.05",  # large steps, so a mismatch in any knob shows in the adapted scores
    "adapt.batch=8",
    "adapt.stage.batch_size=8",
]


def test_job_and_endpoint_give_one_batch_the_same_tta_scores(ray_local, tmp_path):
    from ray import serve

    from rayiqa.serve.base import ScorerDeployment

    src = tmp_path / "in"
    src.mkdir()
    names = sorted(p.name for p in samples_dir().iterdir() if p.suffix in (".jpg", ".png"))[::4][:8]
    for name in names:
        shutil.copy(samples_dir() / name, src / name)
    weights = tmp_path / "source.pt"  # one source model for both: a preset's random init differs per process
    torch.save(create_backbone("tiny-cnn").state_dict(), weights)
    cfg = load_config(ScoreConfig, None, [f"input.uri={src}", f"output.uri={tmp_path / 'out'}", f"adapt.weights={weights}", *JOB])
    run_score(cfg)
    rows = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()
    job = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert sorted(job) == names
    assert len({r["tta_batch"] for r in rows}) == 1 and all(r["tta_note"] is None for r in rows)  # one batch of 8

    # the endpoint's model: the job's adapt: knobs as they are, its MLLM as the ranker
    model = ScorerModelConfig(
        kind="llm-tta",
        **cfg.adapt.model_dump(include=set(TTAParams.model_fields)),
        ranker=cfg.mllms[0],
        deployment=DeploymentConfig(num_cpus=0.25, max_batch_size=8, batch_wait_timeout_s=1.0),
    )
    images = [decode_image((src / name).read_bytes(), cfg.input.max_pixels).image for name in names]  # as Serve's ingress
    serve.start(proxy_location="Disabled")  # handle calls only: no HTTP proxy actor
    try:
        app = ScorerDeployment.options(**model.deployment.serve_options()).bind(model)
        handle = serve.run(app, name="tta-job-serve", route_prefix=None)
        results = handle.score.remote(images, {}).result(timeout_s=300)
    finally:
        serve.shutdown()

    # Same float32 computation on the same CPU: the numbers agree to the last bit here; 1e-6 leaves room
    # for summation order only. Serve's former resize alone moved adapted scores by ~3e-2 on these images.
    evidence = [r["evidence"] for r in results]
    assert all(e["adapted"] and e["batch_size"] == 8 for e in evidence)  # the 8 images formed one batch
    served = dict(zip(names, results))
    for name in names:
        row, ev = job[name], served[name]["evidence"]
        assert ev["p_good"] == pytest.approx(row["tta_ranker_score"], abs=1e-6)
        assert ev["cluster"] == row["tta_cluster"]
        assert ev["base_score"] == pytest.approx(row["tta_base_score"], abs=1e-6)
        assert served[name]["score"] == pytest.approx(row["tta_score"], abs=1e-6)
        assert ev["final_loss"] == pytest.approx(row["tta_final_loss"], abs=1e-6)
    # the adaptation moved the scores, so agreeing on them checks the adaptation, not only the source model
    assert max(abs(row["tta_score"] - row["tta_base_score"]) for row in rows) > 1e-3
