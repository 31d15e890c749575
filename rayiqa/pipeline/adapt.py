"""AdaptStage: LLM-TTA (or a TTA baseline) as an actor-pool stage of the scoring job.

Each call gets a window of rows (the job packs rows with `pack_rows` and repartitions strictly to
`adapt.stage.batch_size` rows per block). Its good rows are cut into consecutive adaptation batches of exactly B images; a remainder r
is adapted in one more batch of B completed with the B - r images before it (context: they lend
their pixels to the batch, their own scores come from their own batch). Only a window with fewer
than B good images gives a short batch: base scores are kept and `tta_note` says why. Error rows
pass through untouched. The backbone is back at its source state after every batch.

Rankers (llm-tta): `llm-iqa` reads the job's own LLM-IQA scores (zero extra MLLM forwards);
`prompt2` asks the paper's prompt 2 through the same engine class (`llm_tta.prompt2_scores`, Serve's
TTA ranking too), one extra forward per image because it is a different prompt (and one more copy of
each ranking MLLM in this actor's memory).
"""
from __future__ import annotations

import pickle
import uuid
from typing import Callable

import numpy as np
import torch

from rayiqa.config import LLMIQAConfig, MLLMConfig
from rayiqa.config.tta import AdaptConfig
from rayiqa.methods import llm_iqa, llm_tta, tta_baselines
from rayiqa.pipeline.stages import TTA_COLUMNS, drop_pixels, missing_as_none


def plan_batches(n: int, b: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positions 0..n-1 as adaptation batches `(members, written)`, every batch exactly b members.

    Consecutive chunks of b; a remainder r is the last r positions plus the b - r before them, of
    which only the r new ones are written. n < b gives one short batch (members = written = all).
    """
    if n == 0:
        return []
    if n < b:
        everyone = np.arange(n)
        return [(everyone, everyone)]
    full = n // b * b
    out = [(np.arange(i, i + b), np.arange(i, i + b)) for i in range(0, full, b)]
    if full < n:
        out.append((np.arange(n - b, n), np.arange(full, n)))
    return out


def _resolve_models(ranker_models: list[int] | None, n_models: int) -> list[int]:
    models = list(range(n_models)) if ranker_models is None else ranker_models
    bad = [m for m in models if not 0 <= m < n_models]
    if bad or not models:
        raise ValueError(f"adapt.ranker_models {ranker_models} must name some of the {n_models} mllms (0..{n_models - 1})")
    return models


def pack_rows(batch: dict) -> dict:
    """Each row's columns pickled into one bytes column `packed` (plus `path`).

    Ray Data hands a column the stages left all None over as NaN floats; those become None again.
    The adapt stage needs strict windows of rows, so Ray Data must concatenate blocks; blocks whose
    array columns differ in kind (a tensor column in one, Python objects in another, as error rows
    make them) cannot be concatenated, bytes columns always can.
    """
    names = list(batch)
    rows = [pickle.dumps({c: missing_as_none(batch[c][i]) for c in names}) for i in range(len(batch["path"]))]
    return {"path": batch["path"], "packed": _column(rows)}


def unpack_rows(batch: dict) -> dict:
    """The inverse of `pack_rows`: the original columns, as object arrays."""
    rows = [pickle.loads(b) for b in batch["packed"]]
    return {c: _column([r[c] for r in rows]) for c in rows[0]} if rows else {}


def _raiser(exc: Exception) -> Callable[..., llm_tta.AdaptResult]:
    def adapt(*_: object) -> llm_tta.AdaptResult:
        raise RuntimeError(f"ranking failed: {type(exc).__name__}: {exc}")

    return adapt


def _column(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class AdaptStage:
    """One adapter actor: source backbone (+ ranker engines for prompt2), adapts each batch of B."""

    def __init__(self, cfg: AdaptConfig, mllms: list[MLLMConfig], method: LLMIQAConfig) -> None:
        if cfg.method == "none":
            raise ValueError("adapt.method is 'none': the adapt stage should not be built")
        self.cfg, self.method = cfg, method
        self.backbone = llm_tta.source_backbone(cfg)
        self.device = next(self.backbone.parameters()).device
        self.models = _resolve_models(cfg.ranker_models, len(mllms))
        self.engines = []
        if cfg.method == "llm-tta" and cfg.ranker == "prompt2":
            from rayiqa.models.mllm import create_engine

            self.engines = [create_engine(mllms[m]) for m in self.models]
        self.affinity_net = None
        if cfg.method == "fa-tta-iqa":
            from rayiqa.models.backbones.vgg import create_vgg16_features

            self.affinity_net = create_vgg16_features(cfg.affinity_weights).to(self.device)
        self.batch_prefix = uuid.uuid4().hex[:8]
        self.n_batches = 0

    def ranker_scores(self, batch: dict, rows: list[int]) -> np.ndarray:
        """The ranking of these rows: the job's LLM-IQA score, or p(good) of prompt 2 (Eq. 2), each
        averaged over the ranking models."""
        if self.cfg.ranker == "llm-iqa":
            per_model = [
                [llm_iqa.mix_grained_score(batch[f"global_score_m{m}"][i], batch[f"local_score_m{m}"][i], self.method.lam)
                 for i in rows]
                for m in self.models
            ]
            return llm_tta.ensemble_scores(per_model)
        return llm_tta.prompt2_scores(self.engines, [batch["image"][i] for i in rows])

    def _adapter(self, ranking: np.ndarray) -> Callable[[torch.Tensor, np.ndarray], llm_tta.AdaptResult]:
        if self.cfg.method == "llm-tta":
            return lambda x, members: llm_tta.adapt_and_predict(self.backbone, x, ranking[members], self.cfg)
        if self.cfg.method == "tta-iqa":
            return lambda x, members: tta_baselines.tta_iqa_adapt_and_predict(self.backbone, x, self.cfg)
        return lambda x, members: tta_baselines.fa_tta_iqa_adapt_and_predict(self.backbone, x, self.affinity_net, self.cfg)

    def _run(self, x: torch.Tensor, members: np.ndarray, adapt: Callable) -> tuple[np.ndarray, llm_tta.AdaptResult | None, str | None]:
        """(base scores, adaptation result or None, note) for one batch; a failure keeps base scores."""
        if len(members) < self.cfg.batch:
            return llm_tta.predict(self.backbone, x), None, f"short batch: {len(members)} images < B={self.cfg.batch}; base scores kept"
        try:
            result = adapt(x, members)
        except (ValueError, RuntimeError, FloatingPointError) as exc:  # one batch's failure is that batch's note
            return llm_tta.predict(self.backbone, x), None, f"adaptation failed, base scores kept: {type(exc).__name__}: {exc}"
        return result.base_scores, result, None

    def __call__(self, packed: dict) -> dict:
        batch = unpack_rows(packed)
        n = len(batch["path"])
        out: dict[str, list] = {c: [None] * n for c in TTA_COLUMNS}
        rows = [i for i in range(n) if not batch["error_kind"][i]]
        needs_ranking = self.cfg.method == "llm-tta"
        try:
            ranking = self.ranker_scores(batch, rows) if needs_ranking and rows else np.zeros(len(rows))
            adapt = self._adapter(ranking)
        except (ValueError, RuntimeError) as exc:  # no ranking: every batch keeps its base scores
            ranking, adapt = np.full(len(rows), np.nan), _raiser(exc)
        images = llm_tta.to_batch_tensor([batch["image"][i] for i in rows], self.cfg.image_size) if rows else None
        for members, written in plan_batches(len(rows), self.cfg.batch):
            batch_id = f"{self.batch_prefix}-{self.n_batches}"
            self.n_batches += 1
            base, result, note = self._run(images[members].to(self.device), members, adapt)
            context = len(members) - len(written)
            if context and note is None:
                note = f"completed with {context} context images"
            cluster = {}
            if result is not None:
                cluster = {int(j): "high" for j in result.clusters.high} | {int(j): "low" for j in result.clusters.low}
            new = set(written.tolist())
            for j, pos in enumerate(members.tolist()):
                if pos not in new:
                    continue
                i = rows[pos]
                out["tta_base_score"][i] = float(base[j])
                out["tta_score"][i] = float(result.scores[j] if result is not None else base[j])
                out["tta_ranker_score"][i] = float(ranking[pos]) if needs_ranking and np.isfinite(ranking[pos]) else None
                out["tta_cluster"][i] = cluster.get(j)
                out["tta_final_loss"][i] = result.final_loss if result is not None else None
                out["tta_batch"][i] = batch_id
                out["tta_method"][i] = self.cfg.method
                out["tta_note"][i] = note

        for col, values in out.items():
            batch[col] = _column(values)
        return drop_pixels(batch)
