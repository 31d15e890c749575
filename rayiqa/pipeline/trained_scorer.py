"""The scoring job with a registered scorer other than LLM-IQA (`scorer: promptiqa | grmp | ...`).

`TrainedScoreStage` is the actor-pool stage: it builds the scorer once per actor and fills the same
per-model columns as an MLLM (`*_m0`, no levels, no crops), so finalize, the Parquet schema and
resume are the job's own.
"""
from __future__ import annotations

from rayiqa.config import ScoreConfig
from rayiqa.pipeline.stages import add_score_columns, drop_pixels, score_isolated
from rayiqa.scorers import build_scorer


class TrainedScoreStage:
    """Actor-pool stage: the scorer over the batch's decoded images (an image it refuses is a model_error row)."""

    def __init__(self, cfg: ScoreConfig):
        self.scorer = build_scorer(cfg.scorer_config, cfg.input)

    def _score_rows(self, batch: dict, rows: list[int]) -> dict[int, float]:
        results = self.scorer.score_arrays([batch["image"][i] for i in rows]) if rows else []
        refused = [r.evidence.get("error") for r in results if r.score is None]
        if refused:
            raise ValueError(refused[0])  # row by row: the refused image becomes its row's error
        return {i: r.score for i, r in zip(rows, results)}

    def __call__(self, batch: dict) -> dict:
        add_score_columns(batch, 0, score_isolated(batch, self._score_rows))
        return drop_pixels(batch)
