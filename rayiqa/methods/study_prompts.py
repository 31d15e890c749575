"""The nine prompting systems of the MLLM IQA study (mllm-iqa-study.txt, Secs. 3.1-3.2), NR and FR, in one place.

A system is a stimulus method (single / double / multiple) times a prompting method (standard /
in_context / chain_of_thought). Every answer is read from choice-token logits right after an
assistant turn that starts with "[" (a digit after "[" is one token for Qwen-style tokenizers, while
a digit after a space is two, and chat templates strip a trailing space from the assistant prefix):

- single: digits "1".."9" standing for 0, 12.5, ..., 100 -- the paper's 0-100 score (Sec. 3.1) on
  nine single-token levels, because "100" is three tokens for digit-splitting tokenizers;
- double: "1" (image 1 better), "2" (image 2 better), "0" (comparable) -- the paper's third option;
- multiple: the ranking "[3,1,4,2]" read as L-1 constrained choices, greedily: step k offers the
  image numbers not ranked yet, after the prefix holding the choices already made. This reads the
  listwise answer the paper asks for from logits only (no parsing), one forward per step.

FR variants show the reference image first. In-context prompts show exemplar images with human
judgements (multi-image requests); chain-of-thought prompts ask for a description first, which the
engine generates, then append it to the assistant turn before the constrained answer step.
Multi-image requests need an engine that accepts several images per request: the transformers
engine does; vLLM through ray.data.llm does when `limit_mm_per_prompt={"image": n}` is at least
the request's image count (rayiqa.models.mllm.vllm_engine sets it from the prompt).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from rayiqa.methods.psychophysics import Comparison, ranking_to_comparisons
from rayiqa.models.mllm.base import IMAGE_PLACEHOLDER, LevelPrompt

Stimulus = Literal["single", "double", "multiple"]
Prompting = Literal["standard", "in_context", "chain_of_thought"]
Scenario = Literal["nr", "fr"]

STIMULI: tuple[Stimulus, ...] = ("single", "double", "multiple")
PROMPTINGS: tuple[Prompting, ...] = ("standard", "in_context", "chain_of_thought")
SYSTEMS: tuple[str, ...] = tuple(f"{s}-{p}" for s in STIMULI for p in PROMPTINGS)
PROMPT_VERSION = "v1"

SINGLE_LEVELS = tuple(str(k) for k in range(1, 10))
SINGLE_VALUES = tuple(float(v) for v in np.linspace(0.0, 100.0, len(SINGLE_LEVELS)))
DOUBLE_LEVELS = ("1", "2", "0")
DOUBLE_OUTCOMES = ("i", "j", "tie")  # psychophysics' outcome of (first, second) per double level
MAX_LIST_SIZE = 9  # image numbers must stay single digits
ANSWER_OPEN = "["
FINAL_ANSWER = "Final answer: "

SYSTEM_TEXT = "You are an expert in image quality assessment."
_ATTRIBUTES = "sharpness, noise, blur, colour, contrast, exposure and compression artifacts"
_QUESTION = {
    "single": "Rate the quality of the {test} on a scale from 1 (worst) to 9 (best){vs_ref}.",
    "double": "Which image has better quality{vs_ref}? Answer 1 for image 1, 2 for image 2, or 0 if their "
    "quality is comparable.",
    "multiple": "Rank the {n} images by quality{vs_ref}, from best to worst, as a list of image numbers.",
}
_FORMAT = {
    "single": "Give the score in brackets, like [score].",
    "double": "Give the answer in brackets, like [answer].",
    "multiple": "Give the ranking in brackets, like [{example}].",
}


def split_system(system: str) -> tuple[Stimulus, Prompting]:
    """"double-in_context" -> ("double", "in_context"); ValueError naming the allowed systems."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown prompting system {system!r}; choose from {list(SYSTEMS)}")
    stimulus, prompting = system.split("-", 1)
    return stimulus, prompting  # type: ignore[return-value]


def n_test_images(stimulus: Stimulus, list_size: int) -> int:
    """Test images per request: 1, 2, or the list size L (2 <= L <= 9)."""
    if stimulus == "multiple":
        if not 2 <= list_size <= MAX_LIST_SIZE:
            raise ValueError(f"list_size must lie in [2, {MAX_LIST_SIZE}], got {list_size}")
        return list_size
    return {"single": 1, "double": 2}[stimulus]


def prompt_id(stimulus: Stimulus, prompting: Prompting, scenario: Scenario, n_exemplars: int = 0) -> str:
    """A stable id of the prompt text family, stored with every raw answer."""
    shots = f"/{n_exemplars}shot" if prompting == "in_context" else ""
    return f"{scenario}/{stimulus}/{prompting}{shots}/{PROMPT_VERSION}"


def _images_block(n: int, scenario: Scenario) -> str:
    """The image slots of one stimulus: the reference first (FR), then the test image(s), numbered."""
    ref = f"Reference image: {IMAGE_PLACEHOLDER}\n" if scenario == "fr" else ""
    if n == 1:
        return f"{ref}Test image: {IMAGE_PLACEHOLDER}\n"
    return ref + "".join(f"Image {k}: {IMAGE_PLACEHOLDER}\n" for k in range(1, n + 1))


def user_text(
    stimulus: Stimulus, prompting: Prompting, scenario: Scenario, n: int, exemplar_answers: Sequence[str] = ()
) -> str:
    """The user turn with `<image>` slots in presentation order: per exemplar (reference, images),
    then (reference, test images). `exemplar_answers` are required for in-context prompting only."""
    if (prompting == "in_context") != bool(exemplar_answers):
        raise ValueError(f"{prompting} prompting takes {'at least one' if prompting == 'in_context' else 'no'} exemplar")
    vs_ref = " compared with the reference image" if scenario == "fr" else ""
    question = _QUESTION[stimulus].format(test="test image", n=n, vs_ref=vs_ref)
    fmt = _FORMAT[stimulus].format(example=",".join(str(k) for k in range(1, n + 1)))
    parts = []
    if exemplar_answers:
        parts.append(f"Here are examples with human quality judgements. {question}\n")
        for k, answer in enumerate(exemplar_answers, start=1):
            parts.append(f"Example {k}:\n{_images_block(n, scenario)}Answer: {ANSWER_OPEN}{answer}]\n")
        parts.append("Now the test:\n")
    parts.append(_images_block(n, scenario))
    parts.append(f"{question} {fmt}")
    if prompting == "chain_of_thought":
        what = "the image" if n == 1 else "each image"
        parts.append(f" First describe the {_ATTRIBUTES} of {what}{vs_ref}, then end with '{FINAL_ANSWER}' and the answer.")
    return "".join(parts)


def answer_prefix(rationale: str | None = None, ranked: Sequence[int] = ()) -> str:
    """The assistant turn up to the next answer token: [rationale + "Final answer: "] + "[" + ranked so far."""
    head = f"{rationale.strip()} {FINAL_ANSWER}".lstrip() if rationale is not None else ""
    chosen = "".join(f"{k}," for k in ranked)
    return f"{head}{ANSWER_OPEN}{chosen}"


def answer_prompt(
    stimulus: Stimulus,
    prompting: Prompting,
    scenario: Scenario,
    n: int,
    exemplar_answers: Sequence[str] = (),
    rationale: str | None = None,
    ranked: Sequence[int] = (),
) -> LevelPrompt:
    """The constrained answer step of any system. Multiple stimulus: `ranked` holds the image numbers
    (1-based) already chosen; the levels are the remaining ones. CoT: `rationale` is the generated text."""
    if stimulus == "multiple":
        levels = tuple(str(k) for k in range(1, n + 1) if k not in set(ranked))
        if len(levels) < 2:
            raise ValueError(f"ranking step needs at least 2 remaining images, ranked={list(ranked)} of {n}")
        values = None
    elif ranked:
        raise ValueError(f"{stimulus} stimulus has no ranking steps")
    else:
        levels, values = (SINGLE_LEVELS, SINGLE_VALUES) if stimulus == "single" else (DOUBLE_LEVELS, None)
    return LevelPrompt(
        user=user_text(stimulus, prompting, scenario, n, exemplar_answers),
        levels=levels,
        system=SYSTEM_TEXT,
        assistant_prefix=answer_prefix(rationale, ranked),
        values=values,
    )


def reasoning_prompt(stimulus: Stimulus, scenario: Scenario, n: int) -> LevelPrompt:
    """The chain-of-thought generation step: the CoT user turn with an open assistant turn (no prefix).
    Its `levels` are those of the answer step, unused during generation."""
    first = answer_prompt(stimulus, "chain_of_thought", scenario, n, rationale="")
    return LevelPrompt(user=first.user, levels=first.levels, system=first.system, values=first.values)


def exemplar_answer(stimulus: Stimulus, q: Sequence[float], score_range: tuple[float, float]) -> str:
    """What an exemplar's human scores `q` (higher = better) say, in the answer format of `stimulus`:
    single -> the 1..9 level nearest to q on `score_range`; double -> "1", "2" or "0" (equal scores);
    multiple -> image numbers from best to worst (ties keep presentation order)."""
    q = np.asarray(q, dtype=np.float64)
    if stimulus == "single":
        lo, hi = score_range
        frac = 0.5 if hi == lo else float(np.clip((q[0] - lo) / (hi - lo), 0.0, 1.0))
        return SINGLE_LEVELS[int(round(frac * (len(SINGLE_LEVELS) - 1)))]
    if stimulus == "double":
        return "0" if q[0] == q[1] else ("1" if q[0] > q[1] else "2")
    return ",".join(str(k + 1) for k in np.argsort(-q, kind="stable"))


def single_score(probs: np.ndarray, readout: Literal["expectation", "argmax"] = "expectation") -> float:
    """0-100 score from the nine single-stimulus level probabilities (expectation or argmax level)."""
    p = np.asarray(probs, dtype=np.float64)
    values = np.asarray(SINGLE_VALUES)
    return float(p @ values) if readout == "expectation" else float(values[int(np.argmax(p))])


def double_outcome(probs: np.ndarray) -> str:
    """"i" (first better), "j" (second better) or "tie" (comparable): the argmax of DOUBLE_LEVELS."""
    return DOUBLE_OUTCOMES[int(np.argmax(probs))]


def answer_comparisons(stimulus: Stimulus, items: Sequence[int], answer: str) -> list[Comparison]:
    """Pairwise outcomes (global item indices) of one parsed answer, for C of Eq. (1).

    double: answer "i" / "j" / "tie" about (items[0], items[1]); multiple: answer "3,1,2" = image
    numbers best first, giving its L(L-1)/2 pairs. Single-stimulus answers give none.
    """
    if stimulus == "double":
        if answer not in DOUBLE_OUTCOMES:
            raise ValueError(f"double-stimulus answer must be one of {DOUBLE_OUTCOMES}, got {answer!r}")
        return [(int(items[0]), int(items[1]), answer)]  # type: ignore[list-item]
    if stimulus == "multiple":
        order = [int(k) - 1 for k in answer.split(",")]
        if sorted(order) != list(range(len(items))):
            raise ValueError(f"ranking {answer!r} is not a permutation of images 1..{len(items)}")
        return ranking_to_comparisons([int(items[k]) for k in order])
    return []


@dataclass(frozen=True)
class SystemSpec:
    """One of the nine systems in one scenario, with its request size and in-context shot count."""

    stimulus: Stimulus
    prompting: Prompting
    scenario: Scenario
    n: int
    n_exemplars: int

    @property
    def name(self) -> str:
        return f"{self.stimulus}-{self.prompting}"

    @property
    def prompt_id(self) -> str:
        return prompt_id(self.stimulus, self.prompting, self.scenario, self.n_exemplars)

    def images_per_request(self) -> int:
        """Total image slots: (reference +) n per stimulus, times (1 + exemplars) for in-context."""
        per = self.n + (self.scenario == "fr")
        return per * (1 + (self.n_exemplars if self.prompting == "in_context" else 0))


def system_spec(system: str, scenario: Scenario, list_size: int = 4, n_exemplars: int = 1) -> SystemSpec:
    """The spec of a named system ("multiple-chain_of_thought") in a scenario."""
    stimulus, prompting = split_system(system)
    shots = n_exemplars if prompting == "in_context" else 0
    if prompting == "in_context" and shots < 1:
        raise ValueError(f"in-context system {system!r} needs n_exemplars >= 1")
    return SystemSpec(stimulus, prompting, scenario, n_test_images(stimulus, list_size), shots)
