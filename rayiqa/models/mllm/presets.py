"""MLLM presets -> a name `from_pretrained` can load, and whether its weights are trained.

"tiny" is the offline random-weight checkpoint folder; "tiny-iqa" is the small Qwen2.5-VL that
`rayiqa train tiny-iqa` taught rayiqa's quality prompts on synthetic distortions, shipped in the
package (rayiqa/assets/models/tiny-iqa). Anything else (a Hugging Face id or a local folder) is passed
through unchanged, so real and tiny models go through the same loading code.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from rayiqa.models.mllm.tiny import tiny_checkpoint_dir

TINY = "tiny"
TINY_IQA = "tiny-iqa"
RANDOM_INIT = "random-init"
TRAINED_SYNTHETIC = "rayiqa-trained (synthetic)"
TRAINED_SYNTHETIC_NOTE = (
    "a small model trained by rayiqa on synthetic distortions of packaged photographs: its scores follow "
    "blur, noise, compression, contrast and colour loss, not aesthetics or AI-generation artefacts"
)


def tiny_iqa_dir() -> Path:
    """The shipped tiny-iqa model folder (works installed or editable)."""
    return Path(str(files("rayiqa") / "assets" / "models" / "tiny-iqa"))


def resolve_model(preset: str) -> tuple[str, str]:
    """(name or path for from_pretrained, "random-init" | "rayiqa-trained (synthetic)" | "pretrained")."""
    if preset == TINY:
        return str(tiny_checkpoint_dir()), RANDOM_INIT
    if preset == TINY_IQA:
        folder = tiny_iqa_dir()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"preset {TINY_IQA!r}: no model in {folder} (reinstall rayiqa with its package data)")
        return str(folder), TRAINED_SYNTHETIC
    return preset, "pretrained"
