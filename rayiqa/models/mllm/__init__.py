"""MLLM engines: level-token probabilities from one forward (transformers in-process, vLLM on Ray Data)."""
from __future__ import annotations

from rayiqa.config import MLLMConfig
from rayiqa.models.mllm.base import IMAGE_PLACEHOLDER, LevelEngine, LevelPrompt, LevelRequest, softmax
from rayiqa.models.mllm.chat import build_messages, render_prompt
from rayiqa.models.mllm.levels import resolve_level_ids
from rayiqa.models.mllm.presets import resolve_model
from rayiqa.models.mllm.tiny import build_tiny_qwen_checkpoint, tiny_checkpoint_dir
from rayiqa.models.mllm.transformers_engine import TransformersEngine
from rayiqa.models.mllm.vllm_engine import build_vllm_processor


def create_engine(cfg: MLLMConfig) -> LevelEngine:
    """The in-process engine for `cfg`; the vLLM engine is a Ray Data processor instead."""
    if cfg.engine == "transformers":
        return TransformersEngine(cfg)
    raise ValueError(
        f"mllm engine {cfg.engine!r} does not run in-process: build it as a Ray Data stage with "
        "rayiqa.models.mllm.build_vllm_processor(cfg, prompt)"
    )


__all__ = [
    "IMAGE_PLACEHOLDER",
    "LevelEngine",
    "LevelPrompt",
    "LevelRequest",
    "TransformersEngine",
    "build_messages",
    "build_tiny_qwen_checkpoint",
    "build_vllm_processor",
    "create_engine",
    "render_prompt",
    "resolve_level_ids",
    "resolve_model",
    "softmax",
    "tiny_checkpoint_dir",
]
