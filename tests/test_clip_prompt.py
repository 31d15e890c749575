"""GRMP-IQA's prompted CLIP on the tiny preset: text meta-prompt, deep visual prompt (Eq. 1), Eq. 2,
parameter groups and the QGR reference model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rayiqa.methods.grmp_iqa import p_high, quality_loss, semantic_kl
from rayiqa.models.clip_prompt import (
    SCENE_CLASSES,
    ClipPromptConfig,
    PromptedCLIP,
    create_clip_prompt,
    reference_semantic_logits,
    scene_prompts,
)

BASE_TOKENS = (64 // 16) ** 2 + 1  # tiny: 4x4 patches + class token


def tiny(**cfg) -> PromptedCLIP:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random weights"):
        model = create_clip_prompt("tiny", cfg=ClipPromptConfig(**cfg))
    return model


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_tiny_forward_backward_on_four_images(images) -> None:
    model = tiny()
    assert model.weights == "random-init"
    logits = model(images)
    assert logits.shape == (4, 2)
    loss = quality_loss(logits, torch.tensor([0.0, 0.3, 0.6, 1.0]))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.ctx.grad.abs().sum() > 0
    assert model.visual_prompt.tokens.grad.abs().sum() > 0


def test_p_high_is_eq2_on_cosine_similarities(images) -> None:
    model = tiny()
    f = model.encode_image(images)
    g = model.encode_quality_prompts()
    scale = model.clip.logit_scale.exp()  # 1/τ
    cos_high = F.cosine_similarity(f, g[0:1], dim=-1)
    cos_low = F.cosine_similarity(f, g[1:2], dim=-1)
    expected = torch.exp(cos_high * scale) / (torch.exp(cos_high * scale) + torch.exp(cos_low * scale))
    assert torch.allclose(p_high(model(images)), expected, atol=1e-6)


def test_text_prompt_is_context_vectors_before_class_words() -> None:
    model = tiny()
    words = model.clip.token_embedding(model.tokenize(["X X X X high quality.", "X X X X low quality."]))
    emb = model.prompt_embeddings()
    assert emb.shape == words.shape
    for c in range(2):
        assert torch.equal(emb[c, 1:5], model.ctx)
        assert torch.equal(emb[c, :1], words[c, :1]) and torch.equal(emb[c, 5:], words[c, 5:])
    before = model.encode_quality_prompts().detach().clone()
    with torch.no_grad():
        model.ctx.add_(0.5)
    assert not torch.allclose(model.encode_quality_prompts(), before)


def test_without_visual_tokens_the_image_tower_is_open_clips(images) -> None:
    plain = tiny(n_visual_tokens=0)  # the text-prompt-only (CoOp) ablation
    assert torch.allclose(plain.encode_image(images), plain.clip.encode_image(images), atol=1e-6)
    prompted = tiny()  # same seed, so the same CLIP weights
    assert torch.equal(prompted.clip.visual.proj, plain.clip.visual.proj)
    assert not torch.allclose(prompted.encode_image(images), plain.clip.encode_image(images), atol=1e-4)


@pytest.mark.parametrize(("cfg", "n_tokens"), [({}, 1), ({"n_visual_tokens": 3, "visual_projection": True,
                                                            "visual_dropout": 0.1}, 3)])
def test_sequence_length_entering_blocks_and_leaving_encoder(images, cfg, n_tokens) -> None:
    model = tiny(**cfg)
    entering: list[int] = []
    leaving: list[int] = []
    visual = model.clip.visual
    handles = [b.register_forward_pre_hook(lambda m, args: entering.append(args[0].shape[1]))
               for b in visual.transformer.resblocks]
    handles.append(visual.ln_post.register_forward_pre_hook(lambda m, args: leaving.append(args[0].shape[1])))
    model(images)
    for h in handles:
        h.remove()
    assert entering == [BASE_TOKENS + n_tokens] * len(visual.transformer.resblocks)
    assert leaving == [BASE_TOKENS]


def test_prompt_output_is_discarded_at_every_layer(images) -> None:
    model = tiny().eval()
    reference = model.encode_image(images)
    noise = torch.randn(64, generator=torch.Generator().manual_seed(2)) * 3.0  # not constant: LayerNorm would cancel it

    def perturbed(layer: int, position: int) -> torch.Tensor:
        def hook(module, args, output):
            output = output.clone()
            output[:, position] += noise
            return output

        handle = model.clip.visual.transformer.resblocks[layer].register_forward_hook(hook)
        try:
            return model.encode_image(images)
        finally:
            handle.remove()

    n_layers = len(model.clip.visual.transformer.resblocks)
    for layer in range(n_layers):
        assert torch.equal(perturbed(layer, 1), reference)  # position 1 is the prompt: dropped
        kept = 0 if layer == n_layers - 1 else 2  # a patch reaches the class token through later layers
        assert not torch.allclose(perturbed(layer, kept), reference)


def test_pretraining_group_gives_gradient_to_prompts_only(images) -> None:
    model = tiny()
    group = model.prompt_parameters()
    assert set(group) == {"ctx", "visual_prompt.tokens"}
    model.train_only(group)
    quality_loss(model(images), torch.rand(4)).backward()
    assert model.ctx.grad.abs().sum() > 0 and model.visual_prompt.tokens.grad.abs().sum() > 0
    frozen = [n for n, p in model.clip.named_parameters() if p.grad is not None]
    assert frozen == []


def test_finetune_group_is_prompts_and_last_blocks(images) -> None:
    model = tiny()
    group = model.finetune_parameters(last_n_blocks=1)
    blocks = {n.split(".resblocks.")[0] + ".resblocks." + n.split(".resblocks.")[1].split(".")[0]
              for n in group if ".resblocks." in n}
    assert blocks == {"clip.visual.transformer.resblocks.1", "clip.transformer.resblocks.1"}
    n_block_params = len(list(model.clip.transformer.resblocks[1].parameters())) + len(
        list(model.clip.visual.transformer.resblocks[1].parameters()))
    assert len(group) == 2 + n_block_params
    assert "visual_prompt.tokens" not in model.finetune_parameters(1, visual_prompts=False)
    model.train_only(group)
    quality_loss(model(images), torch.rand(4)).backward()
    grads = {n: p.grad is not None for n, p in model.named_parameters()}
    assert all(grads[n] for n in group)
    assert not any(v for n, v in grads.items() if n not in group)
    with pytest.raises(ValueError, match="last_n_blocks"):
        model.finetune_parameters(last_n_blocks=3)


def test_semantic_logits_and_frozen_reference(images) -> None:
    model = tiny(n_visual_tokens=0)
    reference = model.semantic_reference()
    assert all(not p.requires_grad for p in reference.parameters())
    tokens = model.tokenize(scene_prompts())
    assert len(tokens) == len(SCENE_CLASSES) == 9
    quality, semantic = model.quality_and_semantic_logits(images, tokens)
    assert torch.allclose(quality, model(images))
    sem = reference_semantic_logits(reference, images, tokens)
    assert semantic.shape == sem.shape == (4, 9)
    assert semantic_kl(sem, semantic).item() == pytest.approx(0.0, abs=1e-6)  # untuned: V^qua = V^sem
    with torch.no_grad():
        model.clip.transformer.resblocks[-1].mlp.c_fc.weight.mul_(3.0)
    assert torch.allclose(reference_semantic_logits(reference, images, tokens), sem)  # a copy, not a view
    assert semantic_kl(sem, model.quality_and_semantic_logits(images, tokens)[1]).item() > 0


def test_bad_image_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        tiny()(torch.randn(2, 3, 32, 32))


def test_visual_prompt_init_bound() -> None:
    tokens = tiny().visual_prompt.tokens
    assert tokens.shape == (2, 1, 64)
    assert tokens.abs().max() <= math.sqrt(6.0 / (3 * 16 * 16 + 64))


@pytest.mark.parametrize(("cfg", "key"), [({"n_ctx": 0}, "n_ctx"), ({"n_visual_tokens": -1}, "n_visual_tokens"),
                                          ({"visual_dropout": 1.0}, "visual_dropout"),
                                          ({"class_names": ("good",)}, "class_names")])
def test_bad_config_names_the_key(cfg, key) -> None:
    with pytest.raises(ValueError, match=key):
        ClipPromptConfig(**cfg)


def test_image_transform_resizes_to_the_tower_and_normalises_with_clip_statistics() -> None:
    from PIL import Image

    pixel = tiny().image_transform()(Image.new("RGB", (100, 80), (255, 0, 0)))
    assert pixel.shape == (3, 64, 64)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's published values
    expected = torch.tensor([(v - m) / s for v, m, s in zip((1.0, 0.0, 0.0), mean, std)])
    assert torch.allclose(pixel[:, 10, 10], expected, atol=1e-5)
