"""`rayiqa score` with a trained PromptIQA (ISPP from the config) or GRMP-IQA checkpoint, on a real local Ray:
every row's score equals the model run in-process on the same decoded image; bad files stay error rows."""
import json

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from broken import write_broken_files
from rayiqa.config import ConfigError, ScoreConfig, load_config
from rayiqa.config.grmp import GRMPModelConfig
from rayiqa.config.promptiqa import PromptIQAModelConfig
from rayiqa.io.decode import decode_image
from rayiqa.io.samples import samples_dir
from rayiqa.methods.prompt_iqa import score_with_ispp
from rayiqa.models.promptiqa import PromptIQA, to_batch
from rayiqa.pipeline.score_job import run_score
from rayiqa.scorers import create_scorer
from rayiqa.train.grmp import build_model, save_model

SMALL = PromptIQAModelConfig(image_size=32, dim=16, num_heads=2, prompt_depth=1, ispp_depth=1, fusion_depth=1)


def _samples(n: int, offset: int = 0) -> list:
    return sorted(p for p in samples_dir().iterdir() if p.suffix == ".jpg")[offset : offset + n]


def _inputs(tmp_path, n: int = 4):
    src = tmp_path / "in"
    src.mkdir()
    for p in _samples(n):
        (src / p.name).write_bytes(p.read_bytes())
    return src, write_broken_files(src / "broken")


def _run(out, src, scorer: str, *extra: str) -> tuple[dict, dict]:
    cfg = load_config(ScoreConfig, None, [f"scorer={scorer}", f"input.uri={src}", f"output.uri={out}",
                                          "decode.batch_size=3", "score.batch_size=3", *extra])
    run_score(cfg)
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    manifest = json.loads((out / "_manifest.json").read_text())
    return {r["path"].rsplit("/", 1)[-1]: r for r in rows}, manifest


def _decoded(path) -> np.ndarray:
    return decode_image(path.read_bytes(), 10**8).image


def _check_rows(rows: dict, broken: dict, expected: dict, model_id: str, tol: float = 1e-5) -> None:
    assert len(rows) == len(expected) + len(broken)
    for name, kind in broken.items():
        assert rows[name]["error_kind"] == kind and rows[name]["score"] is None
    for name, score in expected.items():
        row = rows[name]
        assert row["error_kind"] is None and row["model_ids"] == [model_id]
        assert row["score"] == pytest.approx(score, abs=tol) and row["model_scores"] == [row["score"]]
        assert row["crop_boxes"] == [] and row["global_score"] == row["score"]


def test_promptiqa_scores_under_the_config_ispp(ray_local, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "promptiqa.pt"
    model = PromptIQA(SMALL).eval()
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, checkpoint)  # DDP-style file
    ispp_files, ispp_scores = _samples(3, offset=10), [0.9, 0.5, 0.1]
    src, broken = _inputs(tmp_path)
    model_args = [f"promptiqa.model.{k}={v}" for k, v in SMALL.model_dump(exclude={"checkpoint", "encoder_weights"}).items()]

    def run(scores: list[float], out: str):
        ispp = "[" + ", ".join(f"{{path: {p}, score: {s}}}" for p, s in zip(ispp_files, scores)) + "]"
        return _run(tmp_path / out, src, "promptiqa",
                    f"promptiqa.model.checkpoint={checkpoint}", f"promptiqa.ispp={ispp}", *model_args)

    rows, manifest = run(ispp_scores, "normal")
    inverted, _ = run([1 - s for s in ispp_scores], "inverted")

    good = {p.name: _decoded(p) for p in src.iterdir() if p.is_file()}
    ispp_batch = to_batch([_decoded(p) for p in ispp_files], SMALL.image_size)
    names = sorted(good)
    with torch.no_grad():
        expected = score_with_ispp(model, to_batch([good[n] for n in names], SMALL.image_size), ispp_batch,
                                   torch.tensor(ispp_scores))
        expected_inv = score_with_ispp(model, to_batch([good[n] for n in names], SMALL.image_size), ispp_batch,
                                       1 - torch.tensor(ispp_scores))
    model_id = f"promptiqa:{checkpoint}"
    # A random-init model depends only weakly on its prompt (~3e-6 here): the tolerance is 5x below that.
    assert np.abs(expected - expected_inv).min() > 2e-6
    _check_rows(rows, broken, dict(zip(names, expected.tolist())), model_id, tol=4e-7)
    _check_rows(inverted, broken, dict(zip(names, expected_inv.tolist())), model_id, tol=4e-7)
    assert manifest["models"]["scorer"]["model_id"] == model_id


def test_grmp_scores_with_a_finetuned_checkpoint(ray_local, tmp_path):
    cfg = GRMPModelConfig(seed=3)
    checkpoint = tmp_path / "grmp"
    checkpoint.mkdir()
    save_model(build_model(cfg), cfg, checkpoint)
    src, broken = _inputs(tmp_path)
    rows, _ = _run(tmp_path / "out", src, "grmp", f"grmp.checkpoint={checkpoint}")
    good = sorted(p for p in src.iterdir() if p.is_file())
    results = create_scorer("grmp", checkpoint=str(checkpoint)).score([_decoded(p) for p in good])
    expected = {p.name: r.score for p, r in zip(good, results)}
    assert all(0 < s < 1 for s in expected.values())
    _check_rows(rows, broken, expected, f"grmp:{checkpoint}")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["scorer=promptiqa"], "promptiqa.model.checkpoint"),
        (["scorer=grmp"], "grmp.checkpoint"),
        (["scorer=grmp", "grmp.checkpoint=x", "adapt.method=llm-tta"], "adapt.method"),
        (["scorer=promptiqa", "promptiqa.ispp=[{path: a.png, score: 7}]"], "promptiqa.ispp.0.score"),
        (["scorer=clip"], "scorer"),
    ],
)
def test_scorer_config_errors_name_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(ScoreConfig, None, overrides)
