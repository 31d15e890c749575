"""The one interface every MLLM engine offers: level-token probabilities from a single forward.

A `LevelPrompt` says what to ask and which answer tokens to read; a `LevelRequest` pairs it with the
image(s) it is asked about. Engines return, per request, the softmax over the logits of the level
tokens only (Q-Align / Q-Bench style), never parsed free text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class LevelPrompt:
    """A chat prompt whose answer is read as one of `levels` (single tokens) right after the prompt.

    `user` may hold `<image>` placeholders to interleave several images with text; without any,
    the request's images come first, then the text. `assistant_prefix` is text the assistant turn
    starts with (e.g. "The quality of the image is"), so the level token is the next token after it.
    `values` are the numbers the levels stand for (defaults to 1..K).
    """

    user: str
    levels: tuple[str, ...]
    system: str | None = None
    assistant_prefix: str = ""
    values: tuple[float, ...] | None = None

    def level_values(self) -> np.ndarray:
        vals = self.values if self.values is not None else tuple(range(1, len(self.levels) + 1))
        if len(vals) != len(self.levels):
            raise ValueError(f"{len(self.levels)} levels but {len(vals)} values")
        return np.asarray(vals, dtype=np.float64)

    def n_images(self) -> int:
        return self.user.count(IMAGE_PLACEHOLDER)


@dataclass
class LevelRequest:
    """One forward: a prompt and the RGB uint8 HxWx3 images it refers to."""

    prompt: LevelPrompt
    images: list[np.ndarray] = field(default_factory=list)


class LevelEngine(Protocol):
    """What the stages need from an MLLM: (N, K) level probabilities, rows summing to 1, for all the
    requests of a call at once (the engine batches them), and greedy free text for chain-of-thought.

    A request refused on its own merits (too long, an image the processor rejects) raises ValueError;
    any other exception is the engine's (device, memory, a dead engine) and fails the caller's task.
    """

    model_id: str
    weights: str  # "pretrained" or "random-init"

    def level_probs(self, requests: Sequence[LevelRequest]) -> np.ndarray: ...

    def generate_text(self, requests: Sequence[LevelRequest], max_new_tokens: int) -> list[str]: ...


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax in float64 (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
