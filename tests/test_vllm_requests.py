"""The vLLM engine's request building and logprob parsing, without vLLM installed."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from rayiqa.config import MLLMConfig
from rayiqa.models.mllm import LevelPrompt, TransformersEngine, build_messages, render_prompt, resolve_model
from rayiqa.models.mllm.vllm_engine import (
    LEVEL_ERROR,
    LEVEL_PROBS,
    build_vllm_processor,
    level_probs_from_logprobs,
    prompt_level_ids,
    vllm_engine_kwargs,
    vllm_request,
    vllm_result,
    vllm_sampling_params,
)

QBENCH = LevelPrompt(
    user="Rate the quality of the image.",
    levels=(" good", " poor"),
    system="You judge image quality.",
    assistant_prefix="The quality of the image is",
)
PAIR = LevelPrompt(user="Image A: <image> Image B: <image> Which is better?", levels=("A", "B"))


def entry(logprob: float, rank: int | None = None) -> dict:
    """One token's entry in ray.data.llm's `logprobs` column (vLLM's Logprob as a dict)."""
    return {"logprob": logprob, "rank": rank, "decoded_token": None}


def test_request_holds_messages_and_one_token_sampling() -> None:
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    row = {"id": "img-7", "image": image, "path": "s3://b/7.png"}
    req = vllm_request(row, QBENCH, [101, 102], image_column="image", keep_columns=("id",))
    assert set(req) == {"id", "messages", "sampling_params"}
    assert req["id"] == "img-7"
    system, user, assistant = req["messages"]
    assert system == {"role": "system", "content": "You judge image quality."}
    assert assistant == {"role": "assistant", "content": "The quality of the image is"}
    assert user["role"] == "user"
    image_part, text_part = user["content"]
    assert image_part["type"] == "image_pil" and isinstance(image_part["image_pil"], Image.Image)
    np.testing.assert_array_equal(np.asarray(image_part["image_pil"]), image)
    assert text_part == {"type": "text", "text": "Rate the quality of the image."}
    assert req["sampling_params"] == {
        "max_tokens": 1,
        "temperature": 0.0,
        "allowed_token_ids": [101, 102],
        "logprobs": 2,
        "detokenize": False,
    }


def test_multi_image_row_fills_the_placeholders_in_order() -> None:
    a = np.zeros((3, 3, 3), np.uint8)
    b = np.full((3, 3, 3), 255, np.uint8)
    content = vllm_request({"image": [a, b]}, PAIR, [7, 8], image_column="image")["messages"][0]["content"]
    assert [part["type"] for part in content] == ["text", "image_pil", "text", "image_pil", "text"]
    assert np.asarray(content[1]["image_pil"]).max() == 0 and np.asarray(content[3]["image_pil"]).min() == 255
    with pytest.raises(ValueError, match="column 'image' image 0: expected an RGB uint8"):
        vllm_request({"image": np.zeros((3, 3), np.uint8)}, QBENCH, [7, 8], image_column="image")


def test_logprob_parser_renormalises_over_the_levels() -> None:
    # processed_logprobs with allowed_token_ids: already log-normalised over the K levels
    out = [{12: entry(math.log(0.2), 3), 10: entry(math.log(0.5), 1), 11: entry(math.log(0.3), 2)}]
    np.testing.assert_allclose(level_probs_from_logprobs(out, [10, 11, 12]), [0.5, 0.3, 0.2], atol=1e-12)
    # a larger dict (raw logprobs, other tokens present, keys stringified by Arrow, None fillers):
    # softmax([-2, -3]) = [1, e^-1] / (1 + e^-1)
    out = [{"5": entry(-0.1), "7": entry(-2.0), "9": entry(-3.0), "4": None}]
    e = math.exp(-1.0)
    np.testing.assert_allclose(level_probs_from_logprobs(out, [7, 9]), [1 / (1 + e), e / (1 + e)], atol=1e-12)
    np.testing.assert_allclose(level_probs_from_logprobs(out, [9, 7]), [e / (1 + e), 1 / (1 + e)], atol=1e-12)


def test_postprocess_turns_a_bad_output_into_an_error_value() -> None:
    good = vllm_result({"id": 1, "logprobs": [{3: entry(-1.0), 4: entry(-1.0)}]}, [3, 4], keep_columns=("id",))
    assert good == {"id": 1, LEVEL_PROBS: [0.5, 0.5], LEVEL_ERROR: None}
    missing = vllm_result({"id": 2, "logprobs": [{3: entry(-1.0)}]}, [3, 4], keep_columns=("id",))
    assert missing[LEVEL_PROBS] is None
    assert missing[LEVEL_ERROR] == "level token ids [4] missing from the logprobs of ids [3]"
    empty = vllm_result({"id": 3, "logprobs": None}, [3, 4], keep_columns=("id",))
    assert empty[LEVEL_PROBS] is None and "no logprobs" in empty[LEVEL_ERROR]


def test_engine_kwargs_come_from_the_config() -> None:
    cfg = MLLMConfig(engine="vllm", dtype="bfloat16", max_model_len=2048, tensor_parallel_size=2,
                     gpu_memory_utilization=0.5, min_pixels=100, max_pixels=200_000)
    assert vllm_engine_kwargs(cfg, PAIR) == {
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.5,
        "limit_mm_per_prompt": {"image": 2},
        "mm_processor_kwargs": {"size": {"shortest_edge": 100, "longest_edge": 200_000}},
        "logprobs_mode": "processed_logprobs",
    }
    assert vllm_engine_kwargs(cfg, QBENCH)["limit_mm_per_prompt"] == {"image": 1}
    assert vllm_sampling_params([5, 6, 7])["logprobs"] == 3


def test_vllm_level_ids_match_the_transformers_engine() -> None:
    tiny = resolve_model("tiny")[0]
    processor = AutoProcessor.from_pretrained(tiny)
    ids = prompt_level_ids(processor, QBENCH, tiny)
    engine = TransformersEngine(MLLMConfig())
    text = render_prompt(engine.processor, build_messages(QBENCH, [None], lambda _: {"type": "image"}))
    assert ids == engine.level_ids(text, QBENCH.levels)
    assert ids == [processor.tokenizer.convert_tokens_to_ids(t) for t in ("Ġgood", "Ġpoor")]


def test_build_vllm_processor_wires_the_ray_data_llm_stages() -> None:
    import ray

    try:
        proc = build_vllm_processor(
            MLLMConfig(engine="vllm", batch_size=4), QBENCH, keep_columns=("id",), concurrency=1
        )
        assert list(proc.stages) == [
            "PrepareMultimodalStage", "ChatTemplateStage", "TokenizeStage", "vLLMEngineStage"
        ]
        engine_kwargs = proc.stages["vLLMEngineStage"].fn_constructor_kwargs["engine_kwargs"]
        assert engine_kwargs["logprobs_mode"] == "processed_logprobs"
        assert proc.config.model_source == resolve_model("tiny")[0]
        assert proc.config.batch_size == 4
    finally:
        ray.shutdown()
