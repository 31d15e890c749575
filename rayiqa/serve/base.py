"""The contract between the HTTP ingress and the per-model Ray Serve deployments.

Each model family has one deployment class in its own module (`serve/llm_iqa.py`,
`serve/promptiqa.py`, `serve/grmp.py`, `serve/tta.py`) exposing an async `score` method that
takes decoded RGB uint8 images and returns one `ScoreResult` dict per image; deployments that batch
do it inside with `@serve.batch`. The ingress (`serve/app.py`) holds a handle per model name and
calls `handle.score.remote(images, options)`.
"""
from __future__ import annotations

from typing import Any, Protocol, TypedDict

import numpy as np


class ScoreResult(TypedDict, total=False):
    score: float  # the model's quality score for the image
    evidence: dict[str, Any]  # what produced it (level probabilities, crops, requirement name...)


class ScoringDeployment(Protocol):
    async def score(self, images: list[np.ndarray], options: dict[str, Any]) -> list[ScoreResult]: ...


class UnknownRequirement(KeyError):
    """A PromptIQA requirement name that was never registered (the ingress answers 404)."""
