"""Chain-of-thought on the transformers engine: generate a rationale, then read the answer from logits.

Step 1 generates free text (greedy, `max_new_tokens`) from the engine's own model and processor.
Step 2 (`constrained_steps`) appends that text to the assistant turn, followed by an answer cue, and
reads the answer as level/choice-token probabilities with the engine's single-forward `level_probs`
-- the final answer never comes from parsing the generated text. The same steps read a ranking one
constrained choice at a time. vLLM (ray.data.llm) would need two chained processors
for this; the study job runs chain-of-thought on the transformers engine.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from rayiqa.models.mllm.base import LevelPrompt, LevelRequest
from rayiqa.models.mllm.transformers_engine import TransformersEngine


@torch.inference_mode()
def generate_text(engine: TransformersEngine, requests: Sequence[LevelRequest], max_new_tokens: int) -> list[str]:
    """Greedy continuation of each request's rendered prompt, decoded without special tokens."""
    out: list[str] = []
    bs = engine.cfg.batch_size
    for start in range(0, len(requests), bs):
        inputs, _ = engine.encode(requests[start : start + bs], start)
        tokens = engine.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = tokens[:, inputs["input_ids"].shape[1] :]
        out.extend(t.strip() for t in engine.processor.batch_decode(new, skip_special_tokens=True))
    return out


def constrained_steps(
    engine: TransformersEngine,
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
