"""MLLM presets -> a name `from_pretrained` can load, and whether its weights are trained.

"tiny" is the offline random-weight checkpoint folder; anything else (a Hugging Face id or a local
folder) is passed through unchanged, so real and tiny models go through the same loading code.
"""
from __future__ import annotations

from rayiqa.models.mllm.tiny import tiny_checkpoint_dir

TINY = "tiny"


def resolve_model(preset: str) -> tuple[str, str]:
    """(name or path for from_pretrained, "random-init" | "pretrained")."""
    if preset == TINY:
        return str(tiny_checkpoint_dir()), "random-init"
    return preset, "pretrained"
