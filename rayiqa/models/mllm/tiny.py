"""The `tiny` MLLM preset: a random-weight Qwen2.5-VL checkpoint folder built offline, once per cache.

It is a real `Qwen2_5_VLForConditionalGeneration` (small config, fixed seed), a byte-level BPE
tokenizer trained here with Qwen2's own pre-tokenizer, Qwen2-VL's chat template and a real
`Qwen2_5_VLProcessor`, all written with `save_pretrained`, so the engines load it through the same
`from_pretrained` calls as a Hugging Face id. Its scores mean nothing (weights: random-init).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

from filelock import FileLock

if TYPE_CHECKING:  # imported where used: a driver that only looks the cached folder up skips torch/transformers
    from transformers import Qwen2_5_VLConfig, Qwen2Tokenizer

TINY_NAME = "qwen2_5_vl-tiny-v2"  # bump when anything below changes: the cache folder is keyed on it
SEED = 0
VOCAB_SIZE = 600  # BPE vocabulary before special tokens; 300 left " good" / " poor" split

# Qwen2.5-VL's special tokens, in its order; <|endoftext|> is also the pad token.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL's chat template (the model's own chat_template.json): the tiny checkpoint renders chats
# exactly as the real one does, including the default system turn.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Texts the project prompts with (LLM-IQA Sec. 3.1, Q-Align / Q-Bench, the prompting study) and the
# level words; the corpus repeats each word bare and after a space so both become single tokens.
_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant to evaluate image quality. You will be given standards for each "
    "quality level. The quality standard is listed as follows: 7: Perfect, 6: Excellent, 5: Good, "
    "4: Fair, 3: Bad, 2: Poor, 1: Very Bad. The higher the image quality is, the higher the score "
    "should be.",
    "Please evaluate the quality of the image and score in [1, 2, 3, 4, 5, 6, 7].",
    "Please evaluate the quality of the image and score in [1, 2, 3, 4, 5, 6, 7, 8, 9].",
    "How would you rate the quality of this image?",
    "Rate the quality of the image.",
    "The quality of the image is",
    "Which image has better quality? Answer with the number of the image.",
    "Rank the images by quality, from best to worst.",
)
_LEVEL_WORDS = (
    "perfect", "excellent", "good", "fair", "poor", "bad", "very", "high", "low", "average",
    "medium", "acceptable", "terrible", "best", "worst", "better", "worse", "same", "yes", "no",
    "Perfect", "Excellent", "Good", "Fair", "Poor", "Bad", "Very", "High", "Low", "Average",
)


def _corpus() -> list[str]:
    words = [f"{w} {w}" for w in _LEVEL_WORDS]
    digits = [" ".join(str(d) for d in range(10))]
    chat = ["system\nuser\nassistant\n"]
    return (list(_PROMPTS) + words + digits + chat) * 40


def build_tiny_tokenizer() -> Qwen2Tokenizer:
    """Train a ~600-token byte-level BPE with Qwen2's normaliser/pre-tokenizer and wrap it as Qwen's."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    shell = Qwen2Tokenizer()  # Qwen2's NFC normaliser, digit-splitting pre-tokenizer, empty BPE
    backend = shell.backend_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[SPECIAL_TOKENS[0]],
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    bpe = json.loads(backend.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(m) for m in bpe["merges"]],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tiny_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention has no kernel for 16
        num_key_value_heads=1,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_qwen_checkpoint(path: str | Path, seed: int = SEED) -> Path:
    """Write a complete tiny Qwen2.5-VL checkpoint folder at `path` (same seed -> same files)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(_tiny_config(tokenizer)).to(torch.float32).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _cache_root() -> Path:
    return Path(os.environ.get("RAYIQA_CACHE", Path.home() / ".cache" / "rayiqa"))


def tiny_checkpoint_dir() -> Path:
    """The cached tiny checkpoint, built once under a file lock (concurrent actors wait, then reuse)."""
    root = _cache_root()
    final = root / TINY_NAME
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{TINY_NAME}.lock")):
        if not final.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=f".{TINY_NAME}-", dir=root))
            try:
                build_tiny_qwen_checkpoint(staging)
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return final
