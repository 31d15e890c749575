"""`LevelEngine` on vLLM's offline `LLM`: one engine per actor, a whole block's requests in one call.

How the level probabilities come out of ONE generated token: each request asks for `max_tokens=1`,
greedy, `allowed_token_ids` = the K level ids and `logprobs=K`, and the engine runs with
`logprobs_mode="processed_logprobs"`. vLLM's sampler masks every other token to -inf before it
computes processed logprobs, so the K logprobs it returns are exactly the level tokens, each
`logit_i - logsumexp(level logits)`: the softmax the transformers engine takes. The parser softmaxes
them again, which is exact under any logprobs mode as long as all K ids are present.

Prompts are rendered with the same chat builder and processor as the transformers engine and passed
as text + `multi_modal_data`, so both engines tokenise the same string; prefix caching shares the
system prompt across a block. A request vLLM refuses on its own merits (prompt longer than
`max_model_len`, an image its processor rejects) raises `ValueError`, which the stages turn into that
image's error; any other failure leaves the engine unusable (`healthy` is False) and is the actor's.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
from transformers import AutoProcessor

from rayiqa.config import MLLMConfig
from rayiqa.models.mllm.base import LevelRequest, softmax
from rayiqa.models.mllm.chat import build_messages, render_prompt, to_pil
from rayiqa.models.mllm.levels import resolve_level_ids
from rayiqa.models.mllm.presets import resolve_model
from rayiqa.models.mllm.transformers_engine import image_size_kwargs


def vllm_engine_kwargs(cfg: MLLMConfig, max_images: int = 1) -> dict[str, Any]:
    """`vllm.LLM` arguments from the MLLM config (see the module docstring for logprobs_mode).

    One GPU: the executor runs in this process ("uni"), so an actor that dies takes its engine with it
    (a worker process of a killed actor would keep its GPU memory). With `tensor_parallel_size > 1`
    vLLM's multiprocessing executor shards the model over the GPUs Ray gave the actor
    (`score.num_gpus` must cover them; the config checks it).
    """
    return {
        "model": resolve_model(cfg.preset)[0],
        "dtype": cfg.dtype,
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "kv_cache_memory_bytes": cfg.kv_cache_memory_bytes,
        "limit_mm_per_prompt": {"image": max_images},
        "mm_processor_kwargs": image_size_kwargs(cfg),
        "logprobs_mode": "processed_logprobs",
        "enable_prefix_caching": True,
        "enforce_eager": cfg.enforce_eager,
        "seed": 0,
        "distributed_executor_backend": "mp" if cfg.tensor_parallel_size > 1 else "uni",
    }


def level_sampling_params(level_ids: Sequence[int]) -> dict[str, Any]:
    """One greedy token restricted to the level tokens, with the logprobs of all K of them."""
    return {
        "max_tokens": 1,
        "temperature": 0.0,
        "allowed_token_ids": list(level_ids),
        "logprobs": len(level_ids),
        "detokenize": False,
    }


def level_probs_from_logprobs(logprobs: Sequence[Mapping[Any, Any]] | None, level_ids: Sequence[int]) -> np.ndarray:
    """Softmax over the level tokens' logprobs of the first generated token -> (K,) float64.

    Each entry maps token id -> vLLM `Logprob` (or a dict / a float with its `logprob`).
    """
    if not logprobs:
        raise RuntimeError("engine output has no logprobs (was SamplingParams.logprobs set?)")
    first = {int(k): v for k, v in logprobs[0].items() if v is not None}
    missing = [i for i in level_ids if i not in first]
    if missing:
        raise RuntimeError(f"level token ids {missing} missing from the logprobs of ids {sorted(first)}")
    values = [_logprob(first[i]) for i in level_ids]
    return softmax(np.asarray(values, dtype=np.float64))


def _logprob(entry: Any) -> float:
    if isinstance(entry, Mapping):
        return float(entry["logprob"])
    return float(getattr(entry, "logprob", entry))


class VLLMEngine:
    """`LevelEngine` (and free-text generation, for chain-of-thought) on one `vllm.LLM`."""

    def __init__(self, cfg: MLLMConfig, max_images: int = 1) -> None:
        # The engine core in this process too (see vllm_engine_kwargs): nothing outlives the actor.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM  # only on machines with the vllm extra (or its CPU build)

        self.cfg = cfg
        self.model_id, self.weights = resolve_model(cfg.preset)
        self.processor = AutoProcessor.from_pretrained(self.model_id, **image_size_kwargs(cfg))
        self.llm = LLM(**vllm_engine_kwargs(cfg, max_images))
        self.healthy = True
        self._level_ids: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def _prompt(self, request: LevelRequest, index: int) -> tuple[str, dict[str, Any]]:
        """The rendered prompt text and vLLM's prompt dict (text + PIL images) of one request."""
        images = [to_pil(im, f"request {index} image {j}") for j, im in enumerate(request.images)]
        text = render_prompt(self.processor, build_messages(request.prompt, images, lambda _: {"type": "image"}))
        return text, {"prompt": text, "multi_modal_data": {"image": images}} if images else {"prompt": text}

    def _level_ids_of(self, text: str, levels: tuple[str, ...]) -> list[int]:
        key = (text, levels)
        if key not in self._level_ids:
            self._level_ids[key] = resolve_level_ids(self.processor, text, levels, self.model_id)
        return self._level_ids[key]

    def _generate(self, prompts: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        """`LLM.generate` over all prompts; a refusal stays a ValueError, anything else marks the engine dead."""
        try:
            return self.llm.generate(prompts, params, use_tqdm=False)
        except ValueError:
            raise
        except Exception:
            self.healthy = False
            raise

    def level_probs(self, requests: Sequence[LevelRequest]) -> np.ndarray:
        """(N, K) level probabilities, every request of the call submitted at once (vLLM batches them)."""
        from vllm import SamplingParams

        if not requests:
            return np.zeros((0, 0))
        prompts, params, ids = [], [], []
        for i, req in enumerate(requests):
            text, prompt = self._prompt(req, i)
            level_ids = self._level_ids_of(text, req.prompt.levels)
            prompts.append(prompt)
            params.append(SamplingParams(**level_sampling_params(level_ids)))
            ids.append(level_ids)
        outputs = self._generate(prompts, params)
        return np.stack([level_probs_from_logprobs(out.outputs[0].logprobs, lv) for out, lv in zip(outputs, ids)])

    def generate_text(self, requests: Sequence[LevelRequest], max_new_tokens: int) -> list[str]:
        """Greedy continuation of each request's rendered prompt, without special tokens."""
        from vllm import SamplingParams

        prompts = [self._prompt(req, i)[1] for i, req in enumerate(requests)]
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, skip_special_tokens=True)
        return [out.outputs[0].text.strip() for out in self._generate(prompts, [params] * len(prompts))]
