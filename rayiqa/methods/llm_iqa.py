"""LLM-IQA (standard-guided, mix-grained, training-free IQA): section 3 of `llm-iqa.txt`.

Standard-guided prompt with K single-token levels (3.1), Algorithm 1 (mask selection with an area
threshold and a complement mask), bounding-box crops, the area-weighted local score and
s = s_global + lambda * s_local with a mean over an MLLM ensemble (3.2), and Eq. 1's K-level bound.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal, Sequence

import numpy as np

from rayiqa.models.mllm.base import LevelPrompt

# Word standards, best level first. K=7 is the paper's (3.1); the paper gives no words for
# K=3/5/9 (Table 4), so those follow the ITU-R BT.500 five-grade scale and extend it evenly.
WORD_STANDARDS: dict[int, tuple[str, ...]] = {
    3: ("Good", "Fair", "Bad"),
    5: ("Excellent", "Good", "Fair", "Poor", "Bad"),
    7: ("Perfect", "Excellent", "Good", "Fair", "Bad", "Poor", "Very Bad"),
    9: ("Perfect", "Excellent", "Very Good", "Good", "Fair", "Mediocre", "Poor", "Bad", "Very Bad"),
}

# Sentence standards (Table 3, exp. 3): one descriptive sentence per word level.
_SENTENCES = {
    "Perfect": "the image is flawless, sharp and natural in every detail",
    "Excellent": "the image is very clear with only imperceptible flaws",
    "Very Good": "the image is clear with some minor flaws",
    "Good": "the image is clear overall but shows slight distortions",
    "Fair": "the image is acceptable but certain distortions are noticeable",
    "Mediocre": "the image shows clear distortions in some regions",
    "Poor": "the image has strong distortions that hide some content",
    "Bad": "the image is heavily distorted and details are hard to see",
    "Very Bad": "the image is so distorted that its content is barely recognisable",
}

Standard = Literal["word", "number", "sentence"]


def standard_prompt(levels: int = 7, standard: Standard = "word") -> LevelPrompt:
    """The standard-guided prompt of section 3.1 for K levels; the answer is one token "1".."K".

    `number` states only the range, `sentence` a sentence per level (the ablation of Table 3).
    """
    if levels not in WORD_STANDARDS:
        raise ValueError(f"levels must be one of {sorted(WORD_STANDARDS)}, got {levels}")
    words = WORD_STANDARDS[levels]
    scale = ", ".join(str(i) for i in range(1, levels + 1))
    if standard == "number":
        system = (
            "You are a helpful assistant to evaluate image quality. "
            f"The quality is scored with an integer from 1 to {levels}. "
            "The higher the image quality is, the higher the score should be."
        )
    else:
        if standard == "word":
            items = [f"{levels - i}: {w}" for i, w in enumerate(words)]
        elif standard == "sentence":
            items = [f"{levels - i}: {_SENTENCES[w]}" for i, w in enumerate(words)]
        else:
            raise ValueError(f"standard must be 'word', 'number' or 'sentence', got {standard!r}")
        system = (
            "You are a helpful assistant to evaluate image quality. "
            "You will be given standards for each quality level. "
            f"The quality standard is listed as follows: {', '.join(items)}. "
            "The higher the image quality is, the higher the score should be."
        )
    user = f"Please evaluate the quality of the image and score in [{scale}]."
    return LevelPrompt(user=user, system=system, levels=tuple(str(i) for i in range(1, levels + 1)))


def level_score(
    probs: np.ndarray, values: np.ndarray, readout: Literal["expectation", "argmax"] = "expectation"
) -> np.ndarray:
    """Score from level probabilities: softmax-weighted expected level, or the most likely level."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if readout == "expectation":
        return probs @ values
    if readout == "argmax":
        return values[np.argmax(probs, axis=1)]
    raise ValueError(f"readout must be 'expectation' or 'argmax', got {readout!r}")


def min_area(t: float, shape: tuple[int, int]) -> int:
    """Algorithm 1's threshold t (a fraction of the image area) in whole pixels: the least area >= t*H*W,
    with t read as written (0.07 is 7/100, whose float product with 100*100 is 700.0000000000001)."""
    return math.ceil(Fraction(repr(float(t))) * shape[0] * shape[1])


def select_masks(areas: Sequence[int], shape: tuple[int, int], t: float) -> list[int]:
    """Algorithm 1's loop: the indices of the raw masks with m.area >= t (areas in pixels)."""
    least = min_area(t, shape)
    return [i for i, area in enumerate(areas) if area >= least]


def remain_mask(covered: np.ndarray, t: float) -> np.ndarray | None:
    """Algorithm 1's remain_mask, the pixels no kept mask covers (`covered`: their union), when its
    area is >= t and it is not empty; else None."""
    remain = ~covered
    area = int(remain.sum())
    return remain if area > 0 and area >= min_area(t, covered.shape) else None


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight bounding box (x0, y0, x1, y1) of a non-empty mask, end-exclusive."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("bbox of an empty mask")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def crop(image: np.ndarray, box: Sequence[int], mask: np.ndarray | None = None) -> np.ndarray:
    """The sub-image inside `box` with its original pixels (the paper's choice); given a mask,
    pixels outside the object are zeroed (the 'Mask' variant of Table 3, exp. 5)."""
    x0, y0, x1, y1 = box
    out = image[y0:y1, x0:x1]
    if mask is not None:
        out = out * mask[y0:y1, x0:x1, None].astype(out.dtype)
    return np.ascontiguousarray(out)


def area_weights(areas: Sequence[float]) -> np.ndarray:
    """Mask areas normalised to sum to 1: the vector a of s_local = <s, a>."""
    a = np.asarray(areas, dtype=np.float64)
    total = a.sum()
    if total <= 0:
        raise ValueError("area weights need at least one mask with positive area")
    return a / total


def local_score(crop_scores: Sequence[float], areas: Sequence[float]) -> float:
    """s_local = <s, a>: the area-weighted mean of the crops' scores."""
    return float(np.dot(np.asarray(crop_scores, dtype=np.float64), area_weights(areas)))


def mix_grained_score(s_global: float, s_local: float | None, lam: float = 1.0) -> float:
    """s_k = s_global + lambda * s_local for one MLLM; with no local score (whole-image mode), s_global."""
    return float(s_global) if s_local is None else float(s_global + lam * s_local)


def ensemble_score(model_scores: Sequence[float]) -> float:
    """s = sum_k s_k / N_model: the mean over the MLLM ensemble."""
    if len(model_scores) == 0:
        raise ValueError("ensemble of zero models")
    return float(np.mean(model_scores))


def discretise_mos(mos: np.ndarray, levels: int, literal: bool = False) -> np.ndarray:
    """Eq. 1: map MOS onto integer levels. The paper's text says {0..K-1}, its formula multiplies by
    K (giving K+1 values); by default we follow the text (multiply by K-1), `literal` follows the formula."""
    mos = np.asarray(mos, dtype=np.float64)
    lo, hi = mos.min(), mos.max()
    if hi == lo:
        raise ValueError("Eq. 1 needs MOS with more than one distinct value")
    scale = levels if literal else levels - 1
    return np.round(scale * (mos - lo) / (hi - lo))


def k_level_upper_bound(mos: np.ndarray, levels: int, literal: bool = False) -> float:
    """Table 1: (SRCC + PLCC) / 2 between MOS and its Eq. 1 discretisation to K levels."""
    from rayiqa.methods.metrics import plcc, srcc

    mos = np.asarray(mos, dtype=np.float64)
    disc = discretise_mos(mos, levels, literal)
    return (srcc(disc, mos) + plcc(disc, mos)) / 2
