"""The scoring job with a trained single-score model instead of LLM-IQA's MLLMs (`scorer: promptiqa | grmp`).

`TrainedScoreStage` is the actor-pool stage: it loads the model once per actor and fills the same
per-model columns as an MLLM (`*_m0`, no levels, no crops), so finalize, the Parquet schema and
resume are the job's own.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rayiqa.config import InputConfig, ScoreConfig
from rayiqa.config.score import PromptIQAScorerConfig
from rayiqa.pipeline.stages import add_score_columns, drop_pixels, score_isolated

Scorer = Callable[[list[np.ndarray]], list[float]]


def read_image(uri: str, input_cfg: InputConfig) -> np.ndarray:
    """One RGB image read and decoded like the job's inputs; a bad file raises with its reason."""
    from rayiqa.io.fs import resolve_fs
    from rayiqa.io.sources import read_image as read_decoded

    image, kind, msg = read_decoded(uri, *resolve_fs(uri, input_cfg.storage), input_cfg)
    if image is None:
        raise ValueError(f"{uri}: {kind}: {msg}")
    return image


def promptiqa_scorer(cfg: PromptIQAScorerConfig, input_cfg: InputConfig) -> Scorer:
    """PromptIQA under the config's ISPP: its assessment prompt F_AP is computed once, then each batch
    is one encoder pass and one image-prompt fusion pass."""
    import torch

    from rayiqa.models.promptiqa import create_promptiqa, to_batch

    model = create_promptiqa(cfg.model).to(cfg.device)
    size = cfg.model.image_size
    try:
        ispp_images = [read_image(item.path, input_cfg) for item in cfg.ispp]
    except ValueError as exc:
        raise ValueError(f"promptiqa.ispp: {exc}") from exc
    ispp_scores = torch.tensor([item.score for item in cfg.ispp], dtype=torch.float32, device=cfg.device)
    with torch.no_grad():
        prompt = model.ispp_features(to_batch(ispp_images, size).to(cfg.device), ispp_scores)

    @torch.no_grad()
    def score(images: list[np.ndarray]) -> list[float]:
        return model.predict(model.encode(to_batch(images, size).to(cfg.device)), prompt).cpu().tolist()

    return score


def grmp_scorer(checkpoint: str, device: str) -> Scorer:
    """A fine-tuned GRMP-IQA: p(high | x) per image."""
    from rayiqa.serve.grmp import load_grmp_scorer

    scorer = load_grmp_scorer(checkpoint, device)

    def score(images: list[np.ndarray]) -> list[float]:
        results = scorer(images)
        bad = [r["evidence"]["error"] for r in results if "score" not in r]
        if bad:
            raise ValueError(bad[0])
        return [r["score"] for r in results]

    return score


def build_scorer(cfg: ScoreConfig) -> Scorer:
    if cfg.scorer == "promptiqa":
        return promptiqa_scorer(cfg.promptiqa, cfg.input)
    if cfg.scorer == "grmp":
        return grmp_scorer(cfg.grmp.checkpoint, cfg.grmp.device)
    raise ValueError(f"scorer {cfg.scorer!r} is not a trained single-score model")


def scorer_id(cfg: ScoreConfig) -> str:
    """The model id the output's `model_ids` names: the scorer and its checkpoint."""
    checkpoint = cfg.promptiqa.model.checkpoint if cfg.scorer == "promptiqa" else cfg.grmp.checkpoint
    return f"{cfg.scorer}:{checkpoint}"


class TrainedScoreStage:
    """Actor-pool stage: the trained scorer over the batch's decoded images (a failing image is a model_error row)."""

    def __init__(self, cfg: ScoreConfig):
        self.scorer = build_scorer(cfg)

    def _score_rows(self, batch: dict, rows: list[int]) -> dict[int, float]:
        scores = self.scorer([batch["image"][i] for i in rows]) if rows else []
        return dict(zip(rows, scores))

    def __call__(self, batch: dict) -> dict:
        add_score_columns(batch, 0, score_isolated(batch, self._score_rows))
        return drop_pixels(batch)
