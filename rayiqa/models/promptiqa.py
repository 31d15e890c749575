"""The PromptIQA network (Chen et al., ECCV 2024, Sec. 3.2): a score from a target image plus an ISPP.

Visual encoder V: a timm model (pooled features) + a Linear to `dim`. The paper uses MoNet (a
ViT-B/8 with multi-block attention fusion); we use a plain timm encoder by name as the stated
equivalent (`vit_base_patch8_224` for the paper's backbone, weights from a local file) and a
random-weight narrow timm ResNet for `tiny`. Every transformer block is timm's ViT `Block`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from rayiqa.config.promptiqa import PromptIQAModelConfig
from rayiqa.io.decode import resize_batch

MODEL_FILE = "model.pt"  # a checkpoint folder's weights
MODEL_CONFIG_FILE = "model_config.json"  # and the network's shape (PromptIQAModelConfig)

TINY_ENCODER = dict(model_name="resnet10t", channels=(8, 16, 32, 64), stem_width=4)


def _blocks(cfg: PromptIQAModelConfig, depth: int) -> nn.Sequential:
    return nn.Sequential(*(Block(cfg.dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(depth)))


def create_encoder(cfg: PromptIQAModelConfig) -> nn.Module:
    """The timm feature network (num_classes=0 -> pooled features); weights only from a local file."""
    if cfg.encoder == "tiny":
        return timm.create_model(**TINY_ENCODER, num_classes=0, pretrained=False)
    weights = {"pretrained": True, "pretrained_cfg_overlay": {"file": cfg.encoder_weights}} if cfg.encoder_weights else {}
    return timm.create_model(cfg.encoder, num_classes=0, **weights)


class PromptIQA(nn.Module):
    """V (encoder), P (prompt encoder), FM_ISPP, FM_IP and R (regressor) of Fig. 2.

    `ispp_features` turns k image-score pairs into the assessment-prompt feature F_AP (k x dim),
    which a server caches per requirement; `predict` scores images given F_AP.
    """

    def __init__(self, cfg: PromptIQAModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = create_encoder(cfg)
        pretrained = self.encoder.pretrained_cfg
        self.register_buffer("mean", torch.tensor(pretrained["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pretrained["std"]).view(1, 3, 1, 1), persistent=False)
        self.project = nn.Linear(self.encoder.num_features, cfg.dim)
        self.prompt_encoder = _blocks(cfg, cfg.prompt_depth)
        self.prompt_fc = nn.Linear(cfg.dim, cfg.dim)
        self.ispp_fusion = _blocks(cfg, cfg.ispp_depth)
        self.ip_fusion = _blocks(cfg, cfg.fusion_depth)
        self.norm = nn.LayerNorm(cfg.dim)  # the reference code's final norm after the fusion blocks
        self.regressor = nn.Sequential(
            nn.Linear(cfg.dim, cfg.dim // 2), nn.ReLU(), nn.Linear(cfg.dim // 2, 1), nn.Sigmoid()
        )

    def regress(self, tokens: Tensor) -> Tensor:
        """R(norm(x)): (B, dim) -> (B,) scores in [0, 1]."""
        return self.regressor(self.norm(tokens)).squeeze(-1)

    def encode(self, images: Tensor) -> Tensor:
        """V(I): (B, 3, H, W) RGB in [0, 1] -> (B, dim)."""
        size = self.cfg.image_size
        if images.shape[-2:] != (size, size):
            images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        return self.project(self.encoder((images - self.mean) / self.std))

    def prompt_features(self, features: Tensor, scores: Tensor) -> Tensor:
        """F_P_i: Eq. 3 CAT(V(I_i), E(S_i)) (E copies the score to `dim`), 3 blocks, mean, FC -> (..., dim)."""
        expanded = scores.to(features.dtype).unsqueeze(-1).expand_as(features)
        isp = torch.stack([features, expanded], dim=-2)  # (..., 2, dim)
        lead = isp.shape[:-2]
        encoded = self.prompt_encoder(isp.reshape(-1, 2, self.cfg.dim))
        return self.prompt_fc(encoded.mean(dim=1)).reshape(*lead, self.cfg.dim)

    def assessment_prompt(self, prompt_features: Tensor) -> Tensor:
        """F_AP = FM_ISPP(F_P): (B, k, dim) -> (B, k, dim)."""
        return self.ispp_fusion(prompt_features)

    def ispp_features(self, ispp_images: Tensor, ispp_scores: Tensor) -> Tensor:
        """One ISPP (k images, k scores) -> its F_AP (k, dim), the part a server caches per requirement."""
        prompts = self.prompt_features(self.encode(ispp_images), ispp_scores)
        return self.assessment_prompt(prompts.unsqueeze(0)).squeeze(0)

    def predict(self, features: Tensor, assessment_prompt: Tensor) -> Tensor:
        """R(norm(FM_IP(V(I), F_AP)[first token])): features (B, dim), F_AP (B, k, dim) or (k, dim) -> (B,) in [0, 1]."""
        if assessment_prompt.dim() == 2:
            assessment_prompt = assessment_prompt.unsqueeze(0).expand(features.shape[0], -1, -1)
        fused = self.ip_fusion(torch.cat([features.unsqueeze(1), assessment_prompt], dim=1))
        return self.regress(fused[:, 0])

    def forward(self, images: Tensor, ispp_images: Tensor, ispp_scores: Tensor) -> Tensor:
        """Scores of `images` (B, 3, H, W) under one ISPP (k, 3, H, W) with scores (k,)."""
        return self.predict(self.encode(images), self.ispp_features(ispp_images, ispp_scores))


class PlainRegressor(nn.Module):
    """The paper's 'w/o prompt' variant (Tab. 6): the same encoder, norm and regressor, no ISPP: S = R(V(I))."""

    def __init__(self, cfg: PromptIQAModelConfig) -> None:
        super().__init__()
        self.body = PromptIQA(cfg)

    def forward(self, images: Tensor) -> Tensor:
        return self.body.regress(self.body.encode(images))


def _state_dict(obj: object, path: str) -> dict[str, Tensor]:
    """Unwrap {'state_dict'|'model': ...} containers and strip DDP's 'module.' prefixes."""
    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model") if k in obj), None)
        if inner is None:
            raise ValueError(f"{path}: no state dict found (keys: {sorted(obj)[:8]})")
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}


def save_promptiqa(model: PromptIQA, folder: str | Path) -> None:
    """Write the weights (`MODEL_FILE`) and the shape (`MODEL_CONFIG_FILE`) that `load_promptiqa` reads back."""
    torch.save(model.state_dict(), Path(folder) / MODEL_FILE)
    (Path(folder) / MODEL_CONFIG_FILE).write_text(model.cfg.model_dump_json(indent=2))


def load_promptiqa(path: str, cfg: PromptIQAModelConfig) -> PromptIQA:
    """A PromptIQA of shape `cfg` with the weights at `path` (a .pt file or a folder holding model.pt).

    Accepts our checkpoints and DDP-saved ones ('module.' prefixes, extra entries such as the prompt
    count are ignored). A state dict of another architecture fails with the mismatching keys named.
    """
    file = Path(path) / MODEL_FILE if Path(path).is_dir() else Path(path)
    state = _state_dict(torch.load(file, map_location="cpu", weights_only=False), str(file))
    model = PromptIQA(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{file}: does not fit PromptIQA({cfg.encoder}, dim={cfg.dim}); "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def create_promptiqa(cfg: PromptIQAModelConfig) -> PromptIQA:
    """The network from `cfg`: loaded from `cfg.checkpoint` when set, else freshly initialised (eval mode)."""
    return load_promptiqa(cfg.checkpoint, cfg) if cfg.checkpoint else PromptIQA(cfg).eval()


def to_batch(images: list[np.ndarray], size: int) -> Tensor:
    """Decoded RGB uint8 images (H, W, 3), any sizes -> one (N, 3, size, size) float batch in [0, 1]."""
    return torch.from_numpy(resize_batch(images, size))
