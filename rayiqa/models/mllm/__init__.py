"""MLLM engines: level-token probabilities from one forward (transformers or vLLM, in the calling process).

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
    "VLLMEngine": "vllm_engine",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)


def create_engine(cfg: MLLMConfig, max_images: int = 1) -> LevelEngine:
    """The engine `cfg.engine` names, built in this process (an actor of the job, a Serve replica);
    `max_images` bounds the images of one request (vLLM sizes its multimodal budget from it)."""
    if cfg.engine == "vllm":
        from rayiqa.models.mllm.vllm_engine import VLLMEngine

        return VLLMEngine(cfg, max_images)
    from rayiqa.models.mllm.transformers_engine import TransformersEngine

    return TransformersEngine(cfg)


__all__ = [*_HOMES, "create_engine"]
