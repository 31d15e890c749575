"""The nine study prompting systems rendered with the tiny Qwen2.5-VL processor, answer parsing and C."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from rayiqa.methods import study_prompts as sp
from rayiqa.methods.psychophysics import preference_matrix
from rayiqa.models.mllm import build_messages, render_prompt, resolve_level_ids, tiny_checkpoint_dir

PAD, START, END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
TOKENS_PER_IMAGE = 4  # a 56x56 image: (56/14)^2 patches merged 2x2

# Image slots per request, counted by hand: (reference +) test images, times (1 + one exemplar) in context.
EXPECTED_IMAGES = {
    ("single", "nr"): 1, ("single", "fr"): 2,
    ("double", "nr"): 2, ("double", "fr"): 3,
    ("multiple", "nr"): 4, ("multiple", "fr"): 5,
}
# The label written before each image slot of the test stimulus, in order.
EXPECTED_LABELS = {
    ("single", "nr"): ["Test image: "],
    ("single", "fr"): ["Reference image: ", "Test image: "],
    ("double", "nr"): ["Image 1: ", "Image 2: "],
    ("double", "fr"): ["Reference image: ", "Image 1: ", "Image 2: "],
    ("multiple", "nr"): ["Image 1: ", "Image 2: ", "Image 3: ", "Image 4: "],
    ("multiple", "fr"): ["Reference image: ", "Image 1: ", "Image 2: ", "Image 3: ", "Image 4: "],
}


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(tiny_checkpoint_dir())


def _render(processor, prompt) -> tuple[str, list[int]]:
    n = prompt.n_images()
    text = render_prompt(processor, build_messages(prompt, [None] * n, lambda _: {"type": "image"}))
    image = Image.fromarray(np.zeros((56, 56, 3), np.uint8))
    ids = processor(text=[text], images=[image] * n or None, return_tensors="pt")["input_ids"][0].tolist()
    return text, ids


def test_double_standard_nr_renders_exactly(processor) -> None:
    prompt = sp.answer_prompt("double", "standard", "nr", 2)
    text, ids = _render(processor, prompt)
    assert text == (
        "<|im_start|>system\nYou are an expert in image quality assessment.<|im_end|>\n"
        "<|im_start|>user\nImage 1: <|vision_start|><|image_pad|><|vision_end|>\n"
        "Image 2: <|vision_start|><|image_pad|><|vision_end|>\n"
        "Which image has better quality? Answer 1 for image 1, 2 for image 2, or 0 if their quality is "
        "comparable. Give the answer in brackets, like [answer].<|im_end|>\n<|im_start|>assistant\n["
    )
    tok = processor.tokenizer
    # the processor expands each slot to 4 pad tokens; the prompt ends with "assistant\n[" and the
    # answer tokens "1", "2", "0" are the single digits right after "["
    assert tok.convert_ids_to_tokens(ids[-4:]) == ["<|im_start|>", "assistant", "Ċ", "["]
    assert resolve_level_ids(processor, text, prompt.levels, "tiny") == tok.convert_tokens_to_ids(["1", "2", "0"])


@pytest.mark.parametrize("scenario", ["nr", "fr"])
@pytest.mark.parametrize("system", sp.SYSTEMS)
def test_every_system_places_its_images_and_answer(processor, system: str, scenario: str) -> None:
    stimulus, prompting = sp.split_system(system)
    spec = sp.system_spec(system, scenario, list_size=4, n_exemplars=1)
    exemplars = [sp.exemplar_answer(stimulus, [0.2, 0.9, 0.5, 0.1][: spec.n], (0.0, 1.0))] if spec.n_exemplars else []
    rationale = "The image looks sharp." if prompting == "chain_of_thought" else None
    prompt = sp.answer_prompt(stimulus, prompting, scenario, spec.n, exemplars, rationale)
    text, ids = _render(processor, prompt)
    tok = processor.tokenizer
    n_images = EXPECTED_IMAGES[(stimulus, scenario)] * (2 if prompting == "in_context" else 1)
    assert spec.images_per_request() == n_images
    # exact token layout of every image block: start, 4 pads, end -- and nothing else holds pads
    start, pad, end = tok.convert_tokens_to_ids([START, PAD, END])
    starts = [k for k, t in enumerate(ids) if t == start]
    assert len(starts) == n_images and ids.count(pad) == n_images * TOKENS_PER_IMAGE
    for k in starts:
        assert ids[k + 1 : k + 1 + TOKENS_PER_IMAGE] == [pad] * TOKENS_PER_IMAGE
        assert ids[k + 1 + TOKENS_PER_IMAGE] == end
    # the test stimulus is the last block group, in order (reference first for FR)
    labels = EXPECTED_LABELS[(stimulus, scenario)]
    segments = text.split(f"{START}{PAD}{END}")[:-1]
    assert [s.rsplit("\n", 1)[-1] for s in segments[-len(labels) :]] == labels
    if prompting == "in_context":
        assert f"Answer: [{exemplars[0]}]\nNow the test:\n" in text
    # the answer is read right after "[" at the very end of the assistant turn
    tail = f"<|im_start|>assistant\n{rationale} Final answer: [" if rationale else "<|im_start|>assistant\n["
    assert text.endswith(tail)
    level_ids = resolve_level_ids(processor, text, prompt.levels, "tiny")
    assert level_ids == tok.convert_tokens_to_ids(list(prompt.levels))


def test_ranking_steps_offer_the_remaining_images(processor) -> None:
    prompt = sp.answer_prompt("multiple", "standard", "nr", 4, ranked=[3, 1])
    assert prompt.levels == ("2", "4")
    text, _ = _render(processor, prompt)
    assert text.endswith("<|im_start|>assistant\n[3,1,")
    assert resolve_level_ids(processor, text, prompt.levels, "tiny") == processor.tokenizer.convert_tokens_to_ids(["2", "4"])
    with pytest.raises(ValueError, match="at least 2 remaining"):
        sp.answer_prompt("multiple", "standard", "nr", 4, ranked=[3, 1, 2])


def test_reasoning_prompt_opens_the_assistant_turn(processor) -> None:
    prompt = sp.reasoning_prompt("double", "fr", 2)
    text, _ = _render(processor, prompt)
    assert text.endswith("then end with 'Final answer: ' and the answer.<|im_end|>\n<|im_start|>assistant\n")
    assert "compared with the reference image" in text


def test_exemplar_answers_from_human_scores() -> None:
    assert sp.exemplar_answer("single", [0.0], (0.0, 1.0)) == "1"
    assert sp.exemplar_answer("single", [1.0], (0.0, 1.0)) == "9"
    assert sp.exemplar_answer("single", [0.5], (0.0, 1.0)) == "5"  # 0.5 * 8 = 4 -> level 5
    assert sp.exemplar_answer("single", [30.0], (20.0, 60.0)) == "3"  # 0.25 * 8 = 2 -> level 3
    assert sp.exemplar_answer("double", [0.3, 0.7], (0, 1)) == "2"
    assert sp.exemplar_answer("double", [0.7, 0.3], (0, 1)) == "1"
    assert sp.exemplar_answer("double", [0.5, 0.5], (0, 1)) == "0"
    assert sp.exemplar_answer("multiple", [0.2, 0.9, 0.5, 0.1], (0, 1)) == "2,3,1,4"


def test_single_score_readouts() -> None:
    one_hot = np.eye(9)[4]  # level 5
    assert sp.single_score(one_hot) == pytest.approx(50.0)
    mix = np.zeros(9)
    mix[2], mix[6] = 0.25, 0.75  # levels 3 (25) and 7 (75)
    assert sp.single_score(mix) == pytest.approx(0.25 * 25 + 0.75 * 75)
    assert sp.single_score(mix, "argmax") == pytest.approx(75.0)


def test_double_outcome_reads_the_choice_order() -> None:
    assert sp.double_outcome([0.6, 0.3, 0.1]) == "i"
    assert sp.double_outcome([0.2, 0.7, 0.1]) == "j"
    assert sp.double_outcome([0.2, 0.3, 0.5]) == "tie"


def test_preference_matrix_from_answers_matches_hand_counts() -> None:
    comparisons = (
        sp.answer_comparisons("double", [0, 1], "i")
        + sp.answer_comparisons("double", [1, 2], "tie")
        + sp.answer_comparisons("double", [2, 0], "j")  # second (0) better than first (2)
        + sp.answer_comparisons("multiple", [0, 2, 3], "2,3,1")  # best: item 2, then 3, then 0
        + sp.answer_comparisons("single", [1], "5")
    )
    C = preference_matrix(comparisons, 4).toarray()
    expected = np.array(
        [
            [0.0, 1.0, 0.0, 0.0],  # 0 > 1
            [0.0, 0.0, 0.5, 0.0],  # tie 1-2
            [1.0, 0.5, 0.0, 1.0],  # 2 > 0 (ranking), tie 2-1, 2 > 3
            [1.0, 0.0, 0.0, 0.0],  # 3 > 0
        ]
    )
    expected[0, 2] += 1.0  # the double answer "j" on (2, 0): 0 preferred over 2
    np.testing.assert_array_equal(C, expected)


def test_bad_answers_and_systems_name_the_problem() -> None:
    with pytest.raises(ValueError, match="permutation"):
        sp.answer_comparisons("multiple", [0, 1, 2], "1,1,2")
    with pytest.raises(ValueError, match="unknown prompting system 'triple-standard'"):
        sp.split_system("triple-standard")
    with pytest.raises(ValueError, match="list_size"):
        sp.system_spec("multiple-standard", "nr", list_size=10)
