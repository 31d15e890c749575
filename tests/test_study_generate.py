"""Chain-of-thought and ranking on the tiny engine: generation, then constrained answers from logits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rayiqa.config import MLLMConfig
from rayiqa.config.study import DesignConfig, StudyDataConfig
from rayiqa.methods import study_prompts as sp
from rayiqa.models.mllm import LevelRequest, create_engine
from rayiqa.models.mllm.generate import constrained_steps
from rayiqa.pipeline.study_stage import StudyStage

SMALL = dict(device="cpu", min_pixels=28 * 28, max_pixels=56 * 56, batch_size=4)


@pytest.fixture(scope="module")
def engine():
    return create_engine(MLLMConfig(**SMALL))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (48 + 8 * k, 64, 3), dtype=np.uint8) for k in range(4)]


def test_cot_answers_are_distributions_for_every_request(engine, images) -> None:
    reasoning = sp.reasoning_prompt("double", "nr", 2)
    requests = [LevelRequest(reasoning, [images[k], images[k + 1]]) for k in range(3)]
    rationales = engine.generate_text(requests, max_new_tokens=4)
    assert len(rationales) == 3 and all(isinstance(r, str) for r in rationales)

    def prompt_at(i, chosen):
        return sp.answer_prompt("double", "chain_of_thought", "nr", 2, rationale=rationales[i])

    probs, chosen = constrained_steps(engine, [r.images for r in requests], prompt_at, 1)
    assert probs[0].shape == (3, 3)
    np.testing.assert_allclose(probs[0].sum(axis=1), 1.0, atol=1e-9)
    assert all(c[0] == sp.DOUBLE_LEVELS[int(np.argmax(p))] for c, p in zip(chosen, probs[0]))
    # the answer step is the engine's own level read on the prompt holding the rationale
    direct = engine.level_probs([LevelRequest(prompt_at(i, []), r.images) for i, r in enumerate(requests)])
    np.testing.assert_allclose(probs[0], direct, atol=1e-6)


def test_ranking_is_greedy_constrained_decoding(engine, images) -> None:
    n = 4

    def prompt_at(i, chosen):
        return sp.answer_prompt("multiple", "standard", "nr", n, ranked=[int(c) for c in chosen])

    probs, chosen = constrained_steps(engine, [images], prompt_at, n - 1)
    assert [p.shape for p in probs] == [(1, 4), (1, 3), (1, 2)]
    for p in probs:
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert len(set(chosen[0])) == 3 and set(chosen[0]) <= {"1", "2", "3", "4"}
    # step 2 is the level read after "[<first choice>," over the three remaining images
    first = chosen[0][0]
    step2 = engine.level_probs([LevelRequest(prompt_at(0, [first]), images)])
    np.testing.assert_allclose(probs[1], step2, atol=1e-6)
    assert chosen[0][1] == prompt_at(0, [first]).levels[int(np.argmax(step2[0]))]


def test_stage_fails_only_the_row_with_an_unreadable_image(tmp_path, images) -> None:
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(images[0]).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    stage = StudyStage(MLLMConfig(**SMALL), 0, DesignConfig(max_new_tokens=2), StudyDataConfig())
    rows = [
        {"engine_index": 0, "system": "single-chain_of_thought", "scenario": "nr", "items": [str(p)],
         "reference": "", "exemplar_paths": [], "exemplar_answers": []}
        for p in (good, bad, tmp_path / "missing.png")
    ]
    rows.append({**rows[0], "engine_index": 1})  # another engine's row passes through untouched
    out = stage(pd.DataFrame(rows))
    assert out["failed"].tolist()[:3] == [False, True, True]
    assert "bad.png" in out["error"][1] and "missing.png" in out["error"][2]
    assert len(out["answer_probs"][0]) == 1 and sum(out["answer_probs"][0][0]) == pytest.approx(1.0)
    assert 0.0 <= out["score"][0] <= 100.0 and isinstance(out["rationale"][0], str)
    assert out["failed"][3] is None and out["answer"][3] is None
