"""vLLM engine through ray.data.llm: a Ray Data processor that adds `level_probs` to image rows.

How the level probabilities come out of ONE generated token (ray.data.llm 2.60 + vLLM v1):
each request asks for `max_tokens=1`, greedy (`temperature=0`), `allowed_token_ids` = the K level
ids and `logprobs=K`, and the engine runs with `logprobs_mode="processed_logprobs"`. vLLM's sampler
masks every other token to -inf before it computes processed logprobs, so the top-K logprobs it
returns are exactly the K level tokens, each `logit_i - logsumexp(level logits)`: the same softmax
the transformers engine takes, with no full-vocabulary logprobs (`logprobs=-1`) to ship per row.
ray.data.llm's engine stage puts them in the row's `logprobs` column: one dict per generated token,
`{token_id: {"logprob": float, "rank": int | None, "decoded_token": str | None}}`. The parser below
softmaxes the K level logprobs again, which is exact under any logprobs mode as long as all K
level ids are present, and names the missing ids when they are not.

Request building and logprob parsing are plain functions (testable without vLLM); only
`build_vllm_processor` imports ray.data.llm, lazily, since it IS the engine API.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Sequence

import numpy as np
from transformers import AutoProcessor

from rayiqa.config import MLLMConfig
from rayiqa.models.mllm.base import LevelPrompt, softmax
from rayiqa.models.mllm.chat import build_messages, render_prompt, to_pil
from rayiqa.models.mllm.levels import resolve_level_ids
from rayiqa.models.mllm.presets import resolve_model
from rayiqa.models.mllm.transformers_engine import image_size_kwargs

LEVEL_PROBS = "level_probs"  # output column: K floats summing to 1, or None on error
LEVEL_ERROR = "level_error"  # output column: why level_probs is None, else None


def prompt_image_count(prompt: LevelPrompt) -> int:
    """Images per request: one per `<image>` placeholder, else one."""
    return prompt.n_images() or 1


def vllm_engine_kwargs(cfg: MLLMConfig, prompt: LevelPrompt) -> dict[str, Any]:
    """vLLM engine arguments from the MLLM config (see the module docstring for logprobs_mode)."""
    return {
        "dtype": cfg.dtype,
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "limit_mm_per_prompt": {"image": prompt_image_count(prompt)},
        "mm_processor_kwargs": image_size_kwargs(cfg),
        "logprobs_mode": "processed_logprobs",
    }


def vllm_sampling_params(level_ids: Sequence[int]) -> dict[str, Any]:
    """One greedy token restricted to the level tokens, with the logprobs of all K of them."""
    return {
        "max_tokens": 1,
        "temperature": 0.0,
        "allowed_token_ids": list(level_ids),
        "logprobs": len(level_ids),
        "detokenize": False,
    }


def row_images(value: Any) -> list[np.ndarray]:
    """A row's image cell: one HxWx3 array, or a sequence of them for multi-image prompts."""
    if isinstance(value, np.ndarray) and value.ndim == 3:
        return [value]
    return list(value)


def vllm_request(
    row: dict[str, Any],
    prompt: LevelPrompt,
    level_ids: Sequence[int],
    image_column: str,
    keep_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """Preprocess: a row with RGB image(s) -> chat `messages` (PIL image parts) + `sampling_params`."""
    images = [to_pil(im, f"column {image_column!r} image {j}") for j, im in enumerate(row_images(row[image_column]))]
    messages = build_messages(prompt, images, lambda im: {"type": "image_pil", "image_pil": im})
    return {
        **{k: row[k] for k in keep_columns},
        "messages": messages,
        "sampling_params": vllm_sampling_params(level_ids),
    }


def level_probs_from_logprobs(logprobs: Sequence[Mapping[Any, Any]] | None, level_ids: Sequence[int]) -> np.ndarray:
    """Softmax over the level tokens' logprobs of the first generated token -> (K,) float64.

    Accepts token-id keys as int or str (Arrow may stringify them) and skips None entries.
    """
    if not logprobs:
        raise ValueError("engine output has no logprobs (was sampling_params.logprobs set?)")
    first = {int(k): v for k, v in logprobs[0].items() if v is not None}
    missing = [i for i in level_ids if i not in first]
    if missing:
        raise ValueError(f"level token ids {missing} missing from the logprobs of ids {sorted(first)}")
    values = [first[i]["logprob"] if isinstance(first[i], Mapping) else first[i] for i in level_ids]
    return softmax(np.asarray(values, dtype=np.float64))


def vllm_result(row: dict[str, Any], level_ids: Sequence[int], keep_columns: Sequence[str] = ()) -> dict[str, Any]:
    """Postprocess: engine output row -> kept columns + `level_probs` (or None and `level_error`)."""
    out = {k: row[k] for k in keep_columns}
    try:
        out[LEVEL_PROBS] = level_probs_from_logprobs(row.get("logprobs"), level_ids).tolist()
        out[LEVEL_ERROR] = None
    except ValueError as e:
        out[LEVEL_PROBS] = None
        out[LEVEL_ERROR] = str(e)
    return out


def prompt_level_ids(processor: Any, prompt: LevelPrompt, model_id: str) -> list[int]:
    """Level ids after the prompt as the chat-template stage will render it (same for every row)."""
    slots = [None] * prompt_image_count(prompt)
    text = render_prompt(processor, build_messages(prompt, slots, lambda _: {"type": "image"}))
    return resolve_level_ids(processor, text, prompt.levels, model_id)


def build_vllm_processor(
    cfg: MLLMConfig,
    prompt: LevelPrompt,
    image_column: str = "image",
    *,
    keep_columns: Sequence[str] = (),
    concurrency: int | tuple[int, int] = 1,
    accelerator_type: str | None = None,
) -> Any:
    """A ray.data.llm processor: rows with `image_column` -> `keep_columns` + level_probs/level_error.

    Rows that fail inside the engine keep ray.data.llm's `__inference_error__` and skip postprocess.
    """
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    model_source, _ = resolve_model(cfg.preset)
    level_ids = prompt_level_ids(AutoProcessor.from_pretrained(model_source), prompt, model_source)
    config = vLLMEngineProcessorConfig(
        model_source=model_source,
        engine_kwargs=vllm_engine_kwargs(cfg, prompt),
        batch_size=cfg.batch_size,
        concurrency=concurrency,
        accelerator_type=accelerator_type,
        should_continue_on_error=True,
        prepare_multimodal_stage={"enabled": True, "chat_template_content_format": "openai"},
        chat_template_stage={"enabled": True},
        tokenize_stage={"enabled": True},
        detokenize_stage={"enabled": False},
    )
    return build_processor(
        config,
        preprocess=partial(
            vllm_request, prompt=prompt, level_ids=level_ids, image_column=image_column, keep_columns=keep_columns
        ),
        postprocess=partial(vllm_result, level_ids=level_ids, keep_columns=keep_columns),
    )
