"""MLLM engines: level-token probabilities from one forward (transformers in-process, vLLM on Ray Data).

Names are imported on first use (PEP 562): a Ray Data decode worker that only needs the prompt
types must not pay for importing torch and transformers.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayiqa.config import MLLMConfig
    from rayiqa.models.mllm.base import LevelEngine

_HOMES = {
    "IMAGE_PLACEHOLDER": "base", "LevelEngine": "base", "LevelPrompt": "base", "LevelRequest": "base", "softmax": "base",
    "build_messages": "chat", "render_prompt": "chat",
    "resolve_level_ids": "levels",
    "resolve_model": "presets",
    "build_tiny_qwen_checkpoint": "tiny", "tiny_checkpoint_dir": "tiny",
    "TransformersEngine": "transformers_engine",
    "build_vllm_processor": "vllm_engine",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)


def create_engine(cfg: MLLMConfig) -> LevelEngine:
    """The in-process engine for `cfg`; the vLLM engine is a Ray Data processor instead."""
    if cfg.engine == "transformers":
        from rayiqa.models.mllm.transformers_engine import TransformersEngine

        return TransformersEngine(cfg)
    raise ValueError(
        f"mllm engine {cfg.engine!r} does not run in-process: build it as a Ray Data stage with "
        "rayiqa.models.mllm.build_vllm_processor(cfg, prompt)"
    )


__all__ = [*_HOMES, "create_engine"]
