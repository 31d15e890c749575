"""GRMP-IQA's network: open_clip CLIP with a CoOp text meta-prompt and a deep visual meta-prompt.

The text prompt is "v_1 .. v_M [quality]." with M learnable context vectors (paper Sec. 3.2); the
visual prompt is one learnable token per ViT layer whose output is discarded (Eq. 1). The forward
returns the two scaled cosine logits of Eq. 2; the probability and loss live in
`rayiqa.methods.grmp_iqa`. Weights come from open_clip (name + pretrained tag or local file); the
`tiny` preset builds a small `open_clip.CLIP` with random weights for tests and offline demos.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import VisionTransformer, text_global_pool
from torch import Tensor, nn

QUALITY_CLASSES: tuple[str, str] = ("high quality", "low quality")
SCENE_CLASSES: tuple[str, ...] = (
    "animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still-life", "others",
)
RANDOM_INIT = "random-init"

TINY_EMBED_DIM = 32
TINY_VISION_CFG = open_clip.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=64)
TINY_TEXT_CFG = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)


@dataclass(frozen=True)
class ClipPromptConfig:
    """Knobs of the prompt learner; defaults follow the paper (M=4, one visual token per layer)."""

    n_ctx: int = 4  # M, learnable text context vectors
    ctx_std: float = 0.02  # N(0, 0.02) initialisation of the context vectors (CoOp)
    class_names: tuple[str, str] = QUALITY_CLASSES  # [quality] words; index 0 is "high"
    n_visual_tokens: int = 1  # tokens per ViT layer: 1 in the paper, 100 in the reference code
    visual_projection: bool = False  # the code's shared Linear over the visual prompts
    visual_dropout: float = 0.0  # the code's dropout on the visual prompts (0.1 there)

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")
        if self.n_visual_tokens < 0:
            raise ValueError(f"n_visual_tokens must be >= 0 (0: text prompt only), got {self.n_visual_tokens}")
        if not 0.0 <= self.visual_dropout < 1.0:
            raise ValueError(f"visual_dropout must lie in [0, 1), got {self.visual_dropout}")
        if len(self.class_names) != 2:
            raise ValueError(f"class_names must be (high, low), got {self.class_names}")


class DeepVisualPrompt(nn.Module):
    """P^0..P^{L-1}: `n_tokens` learnable tokens for each of the L ViT layers (Eq. 1).

    Initialised uniform in ±sqrt(6 / (3·patch² + width)) as in VPT; the optional shared Linear and
    dropout reproduce the reference code's variant.
    """

    def __init__(
        self, n_layers: int, width: int, patch_area: int, n_tokens: int, projection: bool, dropout: float
    ) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_area + width))
        self.tokens = nn.Parameter(torch.empty(n_layers, n_tokens, width).uniform_(-bound, bound))
        self.proj = nn.Linear(width, width) if projection else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, layer: int) -> Tensor:
        """The prompt tokens inserted before ViT layer `layer`, shape (n_tokens, width)."""
        return self.dropout(self.proj(self.tokens[layer]))


class PromptedCLIP(nn.Module):
    """CLIP with GRMP-IQA's text and visual meta-prompts; `forward(images)` gives (B, 2) logits."""

    def __init__(
        self, clip: open_clip.CLIP, tokenizer: Callable[[list[str]], Tensor], cfg: ClipPromptConfig, weights: str
    ) -> None:
        super().__init__()
        if not isinstance(clip.visual, VisionTransformer) or clip.visual.attn_pool is not None:
            raise ValueError("the deep visual prompt needs an open_clip ViT image tower without attention pooling")
        self.clip = clip
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.weights = weights
        visual = clip.visual
        width = clip.token_embedding.embedding_dim
        self.ctx = nn.Parameter(torch.randn(cfg.n_ctx, width) * cfg.ctx_std)
        prefix = " ".join(["X"] * cfg.n_ctx)
        self.register_buffer(
            "prompt_tokens", tokenizer([f"{prefix} {name}." for name in cfg.class_names]), persistent=False
        )
        self.visual_prompt = DeepVisualPrompt(
            n_layers=len(visual.transformer.resblocks),
            width=visual.conv1.out_channels,
            patch_area=visual.patch_size[0] * visual.patch_size[1],
            n_tokens=cfg.n_visual_tokens,
            projection=cfg.visual_projection,
            dropout=cfg.visual_dropout,
        )

    def prompt_embeddings(self) -> Tensor:
        """Token embeddings of "X .. X [quality]." with the X positions replaced by the context vectors."""
        words = self.clip.token_embedding(self.prompt_tokens)
        ctx = self.ctx.unsqueeze(0).expand(words.shape[0], -1, -1).to(words.dtype)
        return torch.cat([words[:, :1], ctx, words[:, 1 + self.cfg.n_ctx :]], dim=1)

    def encode_quality_prompts(self) -> Tensor:
        """g(q_high), g(q_low): CLIP's text transformer on the prompt embeddings, EOT pooling, projection."""
        clip = self.clip
        x = self.prompt_embeddings() + clip.positional_embedding.to(self.ctx.dtype)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        x = text_global_pool(x, self.prompt_tokens, clip.text_pool_type, eos_token_id=clip.text_eos_id)
        projection = clip.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def encode_image(self, images: Tensor) -> Tensor:
        """Image features f with the deep visual prompt (Eq. 1): [f, -, H] = Layer([f, P, H]) at every layer."""
        self._check_images(images)
        visual = self.clip.visual
        n = self.cfg.n_visual_tokens
        x = visual._embeds(images)  # open_clip's own patchify + class token + positions + ln_pre
        for layer, block in enumerate(visual.transformer.resblocks):
            prompt = self.visual_prompt(layer).unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
            x = block(torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1))
            x = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def forward(self, images: Tensor) -> Tensor:
        """The logits of Eq. 2, logit_scale·<g(q_c), f> for c in (high, low), shape (B, 2)."""
        return self._scaled_cosine(self.encode_image(images), self.encode_quality_prompts())

    def quality_and_semantic_logits(self, images: Tensor, text_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 2's quality logits and V^qua's zero-shot logits over hard prompts (Eq. 7), one image pass.

        The scene logits use the prompted image tower and the (tuned) text tower on `text_tokens`.
        """
        image_features = self.encode_image(images)
        quality = self._scaled_cosine(image_features, self.encode_quality_prompts())
        return quality, self._scaled_cosine(image_features, self.clip.encode_text(text_tokens))

    def semantic_reference(self) -> open_clip.CLIP:
        """V^sem: a frozen copy of the CLIP backbone without prompts; take it before fine-tuning."""
        reference = copy.deepcopy(self.clip).eval()
        return reference.requires_grad_(False)

    def prompt_parameters(self) -> dict[str, nn.Parameter]:
        """θ = [θ_T, θ_V], the parameters meta-pre-training optimises (Sec. 3.3)."""
        return {
            name: p for name, p in self.named_parameters() if name == "ctx" or name.startswith("visual_prompt.")
        }

    def finetune_parameters(self, last_n_blocks: int = 4, visual_prompts: bool = True) -> dict[str, nn.Parameter]:
        """Prompts plus the last n blocks of both encoders (Sec. 4.2).

        `visual_prompts=False` is the reference code's choice (visual prompts frozen while fine-tuning).
        """
        n_visual = len(self.clip.visual.transformer.resblocks)
        n_text = len(self.clip.transformer.resblocks)
        if not 0 <= last_n_blocks <= min(n_visual, n_text):
            raise ValueError(f"last_n_blocks={last_n_blocks} must lie in [0, {min(n_visual, n_text)}]")
        blocks = {f"clip.visual.transformer.resblocks.{i}." for i in range(n_visual - last_n_blocks, n_visual)}
        blocks |= {f"clip.transformer.resblocks.{i}." for i in range(n_text - last_n_blocks, n_text)}
        prompts = self.prompt_parameters()
        if not visual_prompts:
            prompts = {name: p for name, p in prompts.items() if not name.startswith("visual_prompt.")}
        tuned = {name: p for name, p in self.named_parameters() if any(name.startswith(b) for b in blocks)}
        return prompts | tuned

    def train_only(self, params: dict[str, nn.Parameter]) -> None:
        """Freeze every parameter except `params` (requires_grad), so frozen CLIP weights get no gradient."""
        for name, p in self.named_parameters():
            p.requires_grad_(name in params)

    def image_transform(self, is_train: bool = False) -> Callable[[Image.Image], Tensor]:
        """open_clip's preprocessing for this backbone: resize, crop, normalise with its mean/std."""
        cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(self.clip))
        return image_transform_v2(cfg, is_train=is_train)

    def tokenize(self, texts: list[str]) -> Tensor:
        """Token ids of `texts` with the backbone's tokenizer, on the model's device."""
        return self.tokenizer(texts).to(self.ctx.device)

    def _scaled_cosine(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
        return self.clip.logit_scale.exp() * image_features @ text_features.T

    def _check_images(self, images: Tensor) -> None:
        size = tuple(self.clip.visual.image_size)
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != size:
            raise ValueError(f"images must have shape (B, 3, {size[0]}, {size[1]}), got {tuple(images.shape)}")


def scene_prompts(classes: tuple[str, ...] = SCENE_CLASSES) -> list[str]:
    """QGR's hard prompts w_i = "a photo of a [class]." (Sec. 3.4)."""
    return [f"a photo of a {c}." for c in classes]


def reference_semantic_logits(reference: open_clip.CLIP, images: Tensor, text_tokens: Tensor) -> Tensor:
    """V^sem's zero-shot logits: the original CLIP's scaled cosine similarities, shape (B, C)."""
    image_logits, _ = reference.get_logits(images, text_tokens)
    return image_logits


def load_clip(model_name: str, pretrained: str | None) -> tuple[open_clip.CLIP, str]:
    """An open_clip CLIP by name and pretrained tag or local checkpoint file; `tiny` is random-weight.

    Returns the model and what its weights are (`random-init` for tiny or no pretrained).
    """
    if model_name == "tiny":
        model = open_clip.CLIP(embed_dim=TINY_EMBED_DIM, vision_cfg=TINY_VISION_CFG, text_cfg=TINY_TEXT_CFG)
        weights = RANDOM_INIT
    else:
        model = open_clip.create_model(model_name, pretrained=pretrained)
        weights = pretrained or RANDOM_INIT
    if weights == RANDOM_INIT:
        warnings.warn(f"CLIP '{model_name}' has random weights: its quality scores mean nothing", stacklevel=2)
    return model, weights


def create_clip_prompt(
    model_name: str = "ViT-B-16", pretrained: str | None = "openai", cfg: ClipPromptConfig | None = None
) -> PromptedCLIP:
    """Build GRMP-IQA's prompted CLIP: `create_clip_prompt("tiny")` for tests, ViT-B/16 by default."""
    clip, weights = load_clip(model_name, pretrained)
    tokenizer_name = "ViT-B-16" if model_name == "tiny" else model_name
    tokenizer = open_clip.get_tokenizer(tokenizer_name, context_length=clip.context_length)
    return PromptedCLIP(clip, tokenizer, cfg or ClipPromptConfig(), weights)
