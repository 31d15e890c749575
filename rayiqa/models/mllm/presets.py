"""MLLM presets -> a name `from_pretrained` can load, and what its weights are.

"tiny" is the offline random-weight checkpoint folder (for tests that need a model with no opinion);
"tiny-iqa" is the small Qwen2.5-VL that `rayiqa train tiny-iqa` taught rayiqa's quality prompts on
synthetic distortions, shipped in the package (its model card is the folder's README.md). Anything
else (a Hugging Face id or a local folder) is passed through unchanged, so real and tiny models go
through the same loading code.
"""
from __future__ import annotations

from pathlib import Path

from rayiqa.models.mllm.tiny import tiny_checkpoint_dir

TINY = "tiny"
TINY_IQA = "tiny-iqa"
TINY_IQA_DIR = Path(__file__).resolve().parents[2] / "assets" / "models" / "tiny-iqa"
RANDOM_INIT = "random-init"
RAYIQA_TRAINED = "rayiqa-trained (synthetic)"
PRETRAINED = "pretrained"


def resolve_model(preset: str) -> tuple[str, str]:
    """(name or path for from_pretrained, RANDOM_INIT | RAYIQA_TRAINED | PRETRAINED)."""
    if preset == TINY:
        return str(tiny_checkpoint_dir()), RANDOM_INIT
    if preset == TINY_IQA:
        return str(TINY_IQA_DIR), RAYIQA_TRAINED
    return preset, PRETRAINED


def weights_summary(kinds: set[str]) -> str:
    """One word for a run's models: the least trained kind among them wins."""
    for kind in (RANDOM_INIT, RAYIQA_TRAINED):
        if kind in kinds:
            return kind
    return PRETRAINED
