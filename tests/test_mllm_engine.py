"""The tiny Qwen2.5-VL preset, level-token resolution, chat rendering and the transformers engine."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from rayiqa.config import MLLMConfig
from rayiqa.models.mllm import (
    LevelPrompt,
    LevelRequest,
    TransformersEngine,
    build_messages,
    build_tiny_qwen_checkpoint,
    create_engine,
    render_prompt,
    resolve_level_ids,
    resolve_model,
)
from rayiqa.models.mllm.tiny import TINY_NAME

LLM_IQA_SYSTEM = (
    "You are a helpful assistant to evaluate image quality. You will be given standards for each "
    "quality level. The quality standard is listed as follows: 7: Perfect, 6: Excellent, 5: Good, "
    "4: Fair, 3: Bad, 2: Poor, 1: Very Bad. The higher the image quality is, the higher the score "
    "should be."
)


def llm_iqa_prompt(k: int = 7) -> LevelPrompt:
    scale = ", ".join(str(i) for i in range(1, k + 1))
    return LevelPrompt(
        user=f"Please evaluate the quality of the image and score in [{scale}].",
        levels=tuple(str(i) for i in range(1, k + 1)),
        system=LLM_IQA_SYSTEM,
    )


QBENCH = LevelPrompt(
    user="Rate the quality of the image.", levels=(" good", " poor"), assistant_prefix="The quality of the image is"
)


def image_slot(_: object) -> dict:
    return {"type": "image"}


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny_dir() -> str:
    return resolve_model("tiny")[0]


@pytest.fixture(scope="module")
def processor(tiny_dir: str):
    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def engine() -> TransformersEngine:
    return TransformersEngine(MLLMConfig(batch_size=3))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(224, 224), (90, 300), (64, 64), (320, 200), (56, 120)]]


# --- tiny checkpoint ---------------------------------------------------------------------------


def test_concurrent_tiny_builds_share_one_deterministic_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "RAYIQA_CACHE": str(cache)}
    code = "from rayiqa.models.mllm.tiny import tiny_checkpoint_dir; print(tiny_checkpoint_dir())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0].strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(cache / TINY_NAME)
    # one finished folder plus the lock file: no staging folder left behind by the waiting process
    assert sorted(p.name for p in cache.iterdir()) == sorted([TINY_NAME, f"{TINY_NAME}.lock"])
    rebuilt = build_tiny_qwen_checkpoint(tmp_path / "again")
    assert file_digests(cache / TINY_NAME) == file_digests(rebuilt)
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "processor_config.json"} <= set(
        file_digests(rebuilt)
    )


def test_tiny_loads_through_the_real_loading_code(tiny_dir: str, processor) -> None:
    assert resolve_model("tiny") == (tiny_dir, "random-init")
    assert resolve_model("Qwen/Qwen2.5-VL-7B-Instruct") == ("Qwen/Qwen2.5-VL-7B-Instruct", "pretrained")
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert type(model) is Qwen2_5_VLForConditionalGeneration
    assert (model.config.text_config.hidden_size, model.config.text_config.num_hidden_layers) == (64, 2)
    assert model.config.vision_config.depth == 2
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    assert isinstance(processor.video_processor, Qwen2VLVideoProcessor)
    assert isinstance(processor.tokenizer, Qwen2Tokenizer)
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert 500 <= len(tok) <= 620


@pytest.mark.parametrize(
    "word",
    ["good", " good", "poor", " poor", "excellent", " excellent", "bad", " bad", "fair", " fair",
     "perfect", " perfect", "Excellent", " Excellent", *[str(d) for d in range(10)]],
)
def test_tiny_tokenizer_keeps_level_words_whole(processor, word: str) -> None:
    ids = processor.tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    assert processor.tokenizer.decode(ids) == word


# --- chat rendering ----------------------------------------------------------------------------


def test_messages_put_images_at_placeholders_or_first() -> None:
    two = LevelPrompt(user="First <image> then <image> which is better?", levels=("1", "2"))
    msgs = build_messages(two, ["A", "B"], lambda im: {"type": "image", "id": im})
    assert msgs == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "First "},
                {"type": "image", "id": "A"},
                {"type": "text", "text": " then "},
                {"type": "image", "id": "B"},
                {"type": "text", "text": " which is better?"},
            ],
        }
    ]
    msgs = build_messages(QBENCH, ["A"], lambda im: {"type": "image", "id": im})
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"] == [{"type": "image", "id": "A"}, {"type": "text", "text": QBENCH.user}]
    assert msgs[1]["content"] == "The quality of the image is"
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        build_messages(two, ["A"], image_slot)


def test_render_continues_the_assistant_prefix(processor) -> None:
    text = render_prompt(processor, build_messages(QBENCH, [None], image_slot))
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Rate the quality of the image.<|im_end|>\n"
        "<|im_start|>assistant\nThe quality of the image is"
    )
    text = render_prompt(processor, build_messages(llm_iqa_prompt(), [None], image_slot))
    assert text.startswith(f"<|im_start|>system\n{LLM_IQA_SYSTEM}<|im_end|>\n")
    assert text.endswith("score in [1, 2, 3, 4, 5, 6, 7].<|im_end|>\n<|im_start|>assistant\n")


# --- level tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_numeric_levels_are_distinct_single_tokens(processor, k: int) -> None:
    prompt = llm_iqa_prompt(k)
    text = render_prompt(processor, build_messages(prompt, [None], image_slot))
    ids = resolve_level_ids(processor, text, prompt.levels, "tiny")
    assert ids == [processor.tokenizer.convert_tokens_to_ids(str(i)) for i in range(1, k + 1)]
    assert len(set(ids)) == k


def test_words_after_the_prefix_carry_the_space(processor) -> None:
    text = render_prompt(processor, build_messages(QBENCH, [None], image_slot))
    ids = resolve_level_ids(processor, text, QBENCH.levels, "tiny")
    tok = processor.tokenizer
    assert ids == [tok.convert_tokens_to_ids("Ġgood"), tok.convert_tokens_to_ids("Ġpoor")]
    assert ids != [tok.convert_tokens_to_ids("good"), tok.convert_tokens_to_ids("poor")]


def test_multi_token_and_repeated_levels_raise_clear_errors(processor) -> None:
    text = render_prompt(processor, build_messages(QBENCH, [None], image_slot))
    # Qwen2's pre-tokenizer splits digits from a preceding space: " 7" is two tokens, as in Qwen2.5-VL
    with pytest.raises(ValueError, match=r"model 'tiny': level ' 7' is not one token.*\['Ġ', '7'\]"):
        resolve_level_ids(processor, text, (" good", " 7"), "tiny")
    with pytest.raises(ValueError, match=r"level ' goodbad' is not one token.*\['Ġgood', 'bad'\]"):
        resolve_level_ids(processor, text, (" goodbad",), "tiny")
    with pytest.raises(ValueError, match="repeated token ids"):
        resolve_level_ids(processor, text, (" good", " good"), "tiny")


# --- the engine --------------------------------------------------------------------------------


def test_level_probs_shape_and_rows(engine: TransformersEngine, images) -> None:
    assert (engine.model_id, engine.weights) == (resolve_model("tiny")[0], "random-init")
    assert engine.dtype == torch.float32
    probs = engine.level_probs([LevelRequest(llm_iqa_prompt(), [im]) for im in images])
    assert probs.shape == (5, 7) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert (probs > 0).all()


def test_level_probs_match_renormalised_full_softmax(engine: TransformersEngine, images, processor) -> None:
    """Independent formula: p(level) / sum p(levels) from the full next-token distribution."""
    prompt = llm_iqa_prompt()
    text = render_prompt(processor, build_messages(prompt, [None], image_slot))
    from PIL import Image

    inputs = engine.processor(text=[text], images=[Image.fromarray(images[1])], return_tensors="pt")
    with torch.no_grad():
        full = torch.softmax(engine.model(**inputs).logits[0, -1].double(), dim=-1).numpy()
    ids = [processor.tokenizer.convert_tokens_to_ids(str(i)) for i in range(1, 8)]
    expected = full[ids] / full[ids].sum()
    np.testing.assert_allclose(engine.level_probs([LevelRequest(prompt, [images[1]])])[0], expected, atol=1e-6)


def test_level_probs_follow_the_image(engine: TransformersEngine, images) -> None:
    a, b, a_again = engine.level_probs([LevelRequest(QBENCH, [im]) for im in (images[0], images[2], images[0])])
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_allclose(a, a_again, atol=1e-6)


def test_batched_equals_alone_with_left_padding(engine: TransformersEngine, images) -> None:
    """Five different-size images across micro-batches of 3: padding must not move any row."""
    mixed = [LevelRequest(llm_iqa_prompt() if i % 2 else QBENCH, [im]) for i, im in enumerate(images)]
    pairs = [LevelRequest(QBENCH, [im]) for im in images]
    batched = engine.level_probs(pairs)
    alone = np.concatenate([engine.level_probs([r]) for r in pairs])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    with pytest.raises(ValueError, match="share the number of levels"):
        engine.level_probs(mixed)


def test_two_fresh_engines_agree(engine: TransformersEngine, images) -> None:
    requests = [LevelRequest(llm_iqa_prompt(), [im]) for im in images[:3]]
    other = create_engine(MLLMConfig(batch_size=3))
    assert isinstance(other, TransformersEngine)
    np.testing.assert_array_equal(engine.level_probs(requests), other.level_probs(requests))


def test_bad_image_names_the_request(engine: TransformersEngine, images) -> None:
    bad = [LevelRequest(QBENCH, [images[0]]), LevelRequest(QBENCH, [images[0][:, :, 0]])]
    with pytest.raises(ValueError, match=r"request 1 image 0: expected an RGB uint8 HxWx3 array, got shape \(224, 224\)"):
        engine.level_probs(bad)
    with pytest.raises(ValueError, match="dtype float32"):
        engine.level_probs([LevelRequest(QBENCH, [images[0].astype(np.float32)])])
