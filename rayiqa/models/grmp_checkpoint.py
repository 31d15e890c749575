"""GRMP-IQA's model files: the prompted CLIP built from its config, saved and loaded with that config,
so the trainers, the scorer and the endpoint read one checkpoint format."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from rayiqa.config.grmp import GRMPModelConfig
from rayiqa.models.clip_prompt import ClipPromptConfig, PromptedCLIP, create_clip_prompt

MODEL_FILE = "model.pt"
MODEL_CONFIG_FILE = "model.json"


def build_model(cfg: GRMPModelConfig) -> PromptedCLIP:
    """The prompted CLIP of `cfg`, seeded so that every worker and every run builds the same one."""
    torch.manual_seed(cfg.seed)
    prompt_cfg = ClipPromptConfig(
        n_ctx=cfg.n_ctx,
        n_visual_tokens=cfg.n_visual_tokens,
        visual_projection=cfg.visual_projection,
        visual_dropout=cfg.visual_dropout,
    )
    return create_clip_prompt(cfg.clip, cfg.pretrained, prompt_cfg)


def save_model(model: PromptedCLIP, cfg: GRMPModelConfig, directory: str | Path) -> None:
    """Write the whole model state and its config, so a loader needs nothing else (tiny CLIPs included)."""
    directory = Path(directory)
    torch.save(model.state_dict(), directory / MODEL_FILE)
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps({**cfg.model_dump(), "weights": model.weights}))


def load_model(directory: str | Path) -> tuple[PromptedCLIP, GRMPModelConfig]:
    """A model written by `save_model`; the architecture is built without downloading weights."""
    directory = Path(directory)
    for name in (MODEL_FILE, MODEL_CONFIG_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a GRMP-IQA checkpoint: {name} is missing")
    raw = json.loads((directory / MODEL_CONFIG_FILE).read_text())
    weights = raw.pop("weights")
    cfg = GRMPModelConfig.model_validate(raw)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*")  # the real weights come from the file
        model = build_model(cfg.model_copy(update={"pretrained": None}))
    model.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
    model.weights = weights
    return model, cfg
