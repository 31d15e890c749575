"""Constrained choices on any engine: the answer is read from level/choice-token probabilities.

Chain-of-thought first generates a rationale (`engine.generate_text`, greedy), appends it to the
assistant turn with an answer cue, and reads the answer with the engine's single-forward
`level_probs` -- the final answer never comes from parsing the generated text. The same steps read
a ranking one constrained choice at a time.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from rayiqa.models.mllm.base import LevelEngine, LevelPrompt, LevelRequest


def constrained_steps(
    engine: LevelEngine,
    images: Sequence[Sequence[np.ndarray]],
    prompt_at: Callable[[int, Sequence[str]], LevelPrompt],
    n_steps: int,
) -> tuple[list[np.ndarray], list[list[str]]]:
    """Greedy constrained decoding over choice tokens: at step s, request i is asked
    `prompt_at(i, its choices so far)` and its level with the highest probability is chosen.

    Returns per step the (N, K_s) probabilities and per request the chosen level strings. One step
    is a plain level-token read (single / double stimulus); L-1 steps read a ranking of L images.
    """
    chosen: list[list[str]] = [[] for _ in images]
    probs: list[np.ndarray] = []
    for _ in range(n_steps):
        prompts = [prompt_at(i, chosen[i]) for i in range(len(images))]
        p = engine.level_probs([LevelRequest(pr, list(im)) for pr, im in zip(prompts, images)])
        for i, (pr, row) in enumerate(zip(prompts, p)):
            chosen[i].append(pr.levels[int(np.argmax(row))])
        probs.append(p)
    return probs, chosen
