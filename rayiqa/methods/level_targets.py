"""What a quality-taught MLLM should answer to rayiqa's own prompts: soft targets over level tokens.

A quality q in [0, 1] (1: pristine) becomes, for K ascending levels, the distribution whose
expectation is q on the level scale: mass split linearly between the two nearest levels. The
double-stimulus target leans to "comparable" as the two qualities approach each other.
Prompts are exactly those the jobs send: LLM-IQA's standard prompt (Sec. 3.1), LLM-TTA's prompt 2,
and the prompting study's standard single- and double-stimulus prompts, NR and FR.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from rayiqa.methods import llm_tta, study_prompts
from rayiqa.methods.llm_iqa import WORD_STANDARDS, standard_prompt
from rayiqa.models.mllm.base import LevelPrompt

Family = Literal["llm_iqa_word7", "llm_iqa_variants", "tta_good_poor", "study_single", "study_double"]
FAMILIES: tuple[Family, ...] = ("llm_iqa_word7", "llm_iqa_variants", "tta_good_poor", "study_single", "study_double")
LLM_IQA_VARIANTS = tuple((k, s) for k in WORD_STANDARDS for s in ("word", "number", "sentence") if (k, s) != (7, "word"))


def soft_levels(q: float, k: int) -> np.ndarray:
    """K ascending levels; the mass at position q * (K - 1) split between its two nearest levels."""
    pos = float(np.clip(q, 0.0, 1.0)) * (k - 1)
    lo = min(int(np.floor(pos)), k - 2)
    target = np.zeros(k)
    target[lo], target[lo + 1] = lo + 1 - pos, pos - lo
    return target


def double_target(q_first: float, q_second: float, tie_margin: float) -> np.ndarray:
    """Over the study's double levels ("1", "2", "0"): p(comparable) = max(0, 1 - |dq| / margin), the
    rest on the better image."""
    tie = max(0.0, 1.0 - abs(q_first - q_second) / tie_margin)
    better = np.array([1.0, 0.0]) if q_first > q_second else np.array([0.0, 1.0])
    return np.array([*(better * (1.0 - tie)), tie])


@dataclass(frozen=True)
class Question:
    """One training request: the prompt, its images (indices into the caller's list), the target."""

    prompt: LevelPrompt
    images: tuple[int, ...]
    target: np.ndarray


def draw_question(family: Family, qualities: tuple[float, float], has_reference: bool, tie_margin: float,
                  rng: np.random.Generator) -> Question:
    """A question of `family` about versions 0 and 1 (qualities given); 2 is the pristine reference.

    Single-image families ask about one version at random; FR study prompts show the reference first.
    """
    who = int(rng.integers(2))
    q = qualities[who]
    if family in ("llm_iqa_word7", "llm_iqa_variants"):
        k, standard = (7, "word") if family == "llm_iqa_word7" else LLM_IQA_VARIANTS[int(rng.integers(len(LLM_IQA_VARIANTS)))]
        return Question(standard_prompt(k, standard), (who,), soft_levels(q, k))
    if family == "tta_good_poor":
        return Question(llm_tta.prompt2(), (who,), np.array([q, 1.0 - q]))
    fr = has_reference and bool(rng.integers(2))
    ref = (2,) if fr else ()
    scenario = "fr" if fr else "nr"
    if family == "study_single":
        prompt = study_prompts.answer_prompt("single", "standard", scenario, 1)
        return Question(prompt, (*ref, who), soft_levels(q, len(study_prompts.SINGLE_LEVELS)))
    if family == "study_double":
        prompt = study_prompts.answer_prompt("double", "standard", scenario, 2)
        order = (who, 1 - who)
        return Question(prompt, (*ref, *order), double_target(qualities[order[0]], qualities[order[1]], tie_margin))
    raise ValueError(f"unknown prompt family {family!r}; known: {list(FAMILIES)}")
