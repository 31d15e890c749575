"""`llm-iqa`: training-free mix-grained LLM-IQA (Section 3): SAM2 object crops by Algorithm 1, the whole
image and each crop scored by every MLLM on a K-level standard, s_k = s_global + lambda * s_local,
ensembled over the MLLMs.

Its steps are public so the scoring job can run them in separate actor pools: `CropFinder` (segment),
`LevelModel` (one MLLM's level probabilities for an image and its crops), `model_scores` and
`combine`; `LLMIQAScorer.score` composes the same steps in one process.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from rayiqa.config import InputConfig, LLMIQAConfig, MLLMConfig, SegmenterConfig
from rayiqa.config.scorers import ScorerConfig
from rayiqa.methods import llm_iqa
from rayiqa.scorers.base import Scorer, ScoreResult, refused_alone, register_scorer


class LLMIQAScorerConfig(ScorerConfig):
    """The MLLM ensemble, the segmenter and the method's knobs (configs/score.yaml's top-level sections)."""

    name: ClassVar[str] = "llm-iqa"
    mllms: list[MLLMConfig] = Field(default_factory=lambda: [MLLMConfig()], min_length=1)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    method: LLMIQAConfig = Field(default_factory=LLMIQAConfig)

    @property
    def model_id(self) -> str:
        return ",".join(m.preset for m in self.mllms)


class CropFinder:
    """SAM2 automatic masks -> Algorithm 1 -> the crops' boxes, mask areas and (when cropping by mask, or
    for the complement) their masks; memory follows the input image, not SAM2's candidate masks."""

    def __init__(self, seg_cfg: SegmenterConfig, method: LLMIQAConfig) -> None:
        from rayiqa.models.segmenter import Sam2Segmenter

        self.segmenter = Sam2Segmenter(seg_cfg)
        self.method = method

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(boxes, areas, masks) of one image's final masks; masks are empty unless `crop: mask`."""
        found = self.segmenter.masks(image)
        t, by_mask = self.method.area_threshold, self.method.crop == "mask"
        kept = llm_iqa.select_masks(found.areas, image.shape[:2], t)
        boxes, areas = list(found.boxes[kept]), list(found.areas[kept])
        masks = [found.mask(i) for i in kept] if by_mask else []
        remain = llm_iqa.remain_mask(found.covered(kept), t) if self.method.complement else None
        if remain is not None:
            boxes.append(llm_iqa.bbox(remain))
            areas.append(int(remain.sum()))
            masks += [remain] if by_mask else []
        return np.asarray(boxes, dtype=np.int32).reshape(-1, 4), np.asarray(areas, dtype=np.int64), masks


class LevelModel:
    """One MLLM of the ensemble with the standard-guided prompt: level-token probabilities of every image
    of a set of requests in one engine call."""

    def __init__(self, mllm_cfg: MLLMConfig, method: LLMIQAConfig) -> None:
        from rayiqa.models.mllm import create_engine

        self.engine = create_engine(mllm_cfg)
        self.method = method
        self.prompt = llm_iqa.standard_prompt(method.levels, method.standard)
        self.values = self.prompt.level_values()

    def probs(self, requests: list[list[np.ndarray]]) -> list[np.ndarray]:
        """Per request (an image, then its crops): a (1 + crops, K) array of level probabilities."""
        from rayiqa.models.mllm.base import LevelRequest

        flat = [LevelRequest(self.prompt, [im]) for ims in requests for im in ims]
        probs = self.engine.level_probs(flat) if flat else np.zeros((0, len(self.values)))
        out, at = [], 0
        for ims in requests:
            out.append(probs[at : at + len(ims)])
            at += len(ims)
        return out


def model_scores(probs: np.ndarray, areas: np.ndarray, values: np.ndarray, method: LLMIQAConfig) -> tuple[float, np.ndarray, float | None]:
    """One model's (s_global, crop scores, s_local) from its (1 + crops, K) probabilities; s_local is None without crops."""
    scores = llm_iqa.level_score(probs, values, method.readout)
    s_local = llm_iqa.local_score(scores[1:], areas) if len(scores) > 1 else None
    return float(scores[0]), scores[1:], s_local


def combine(s_global: list[float], s_local: list[float | None], lam: float) -> tuple[list[float], float]:
    """(s_k per model, the ensemble score) from each model's global and local scores."""
    s_k = [llm_iqa.mix_grained_score(g, loc, lam) for g, loc in zip(s_global, s_local)]
    return s_k, llm_iqa.ensemble_score(s_k)


class LLMIQAScorer(Scorer):
    """The whole method in one process: crops, every MLLM over each image and its crops, the ensemble.
    Evidence: crops (boxes, areas, weights), per-model level probabilities and scores, the weights tags."""

    def __init__(self, config: LLMIQAScorerConfig, input_cfg: InputConfig) -> None:
        from rayiqa.models.mllm.presets import resolve_model

        super().__init__(config, input_cfg)
        method = config.method
        self.find_crops = CropFinder(config.segmenter, method) if method.segmentation else None
        self.models = [LevelModel(m, method) for m in config.mllms]
        self.model_ids = [m.preset for m in config.mllms]
        self.weights = sorted({resolve_model(m.preset)[1] for m in config.mllms})

    def crops(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """The segment step for one image: (boxes, areas, masks); none when segmentation is off."""
        if self.find_crops is None:
            return np.zeros((0, 4), np.int32), np.zeros(0, np.int64), []
        return self.find_crops(image)

    def score_arrays(self, images: list[np.ndarray]) -> list[ScoreResult]:
        """All images' requests in one engine call per model; an image a model refuses (ValueError: a
        prompt too long, an image its processor rejects) gets `evidence.error`, the others their scores.
        Each image is segmented once, whether it is scored with the others or alone."""
        found = [self.crops(image) for image in images]
        results = refused_alone(lambda idx: self._score([images[i] for i in idx], [found[i] for i in idx]),
                                list(range(len(images))))
        return [ScoreResult(None, {"error": f"model_error: {type(r).__name__}: {r}"}) if isinstance(r, ValueError) else r
                for r in results]

    def _score(self, images: list[np.ndarray], found: list[tuple]) -> list[ScoreResult]:
        requests = []
        for image, (boxes, _, masks) in zip(images, found):
            packed = masks if len(masks) == len(boxes) else [None] * len(boxes)
            requests.append([image, *(llm_iqa.crop(image, box, mask) for box, mask in zip(boxes, packed))])
        per_model = [model.probs(requests) for model in self.models]
        return [self._result(image, boxes, areas, [probs[i] for probs in per_model])
                for i, (image, (boxes, areas, _)) in enumerate(zip(images, found))]

    def _result(self, image: np.ndarray, boxes: np.ndarray, areas: np.ndarray, probs: list[np.ndarray]) -> ScoreResult:
        method = self.config.method
        per_model = [model_scores(p, areas, m.values, method) for p, m in zip(probs, self.models)]
        s_global, s_local = [g for g, _, _ in per_model], [loc for _, _, loc in per_model]
        s_k, score = combine(s_global, s_local, method.lam)
        locals_ = [v for v in s_local if v is not None]
        return ScoreResult(score, {
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "global_score": float(np.mean(s_global)),
            "local_score": float(np.mean(locals_)) if locals_ else None,
            "crop_boxes": [list(map(int, b)) for b in boxes],
            "crop_areas": areas.tolist(),
            "crop_weights": llm_iqa.area_weights(areas).tolist() if len(areas) else [],
            "model_ids": list(self.model_ids),
            "model_scores": s_k,
            "global_probs": [p[0].tolist() for p in probs],
            "crop_scores": [c.tolist() for _, c, _ in per_model],
            "crop_probs": [p[1:].tolist() for p in probs],
            "weights": self.weights,
        })


@register_scorer(LLMIQAScorerConfig)
def create_llm_iqa(config: LLMIQAScorerConfig, input_cfg: InputConfig) -> LLMIQAScorer:
    return LLMIQAScorer(config, input_cfg)
