"""The scoring job's Ray Data stages: decode (tasks), segment and score (actor pools), finalize.

Rows stay one per input image all the way to the write, so the job streams and Ray Data's
checkpointing can resume it: crops travel as boxes (and packed masks) next to the decoded image
and are cut and scored inside the score stage, whatever the engine. A failure of one input (a bad
file, a request the model refuses) becomes that row's error (`error_kind`, `error`) and passes
through untouched; a failure of the model itself (device, memory, a dead engine) fails the block,
which Ray Data re-runs (`max_task_retries`), so it never becomes a column of error rows.
"""
from __future__ import annotations

import logging
import os
import traceback

import numpy as np
import pyarrow as pa

from rayiqa.config import InputConfig, LLMIQAConfig, MLLMConfig, SegmenterConfig
from rayiqa.methods import llm_iqa
from rayiqa.scorers.base import refused_alone
from rayiqa.scorers.llm_iqa import CropFinder, LevelModel, combine, model_scores

log = logging.getLogger(__name__)

EMPTY_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)
NO_BOXES = np.zeros((0, 4), dtype=np.int32)

TTA_COLUMNS = (  # written by rayiqa.pipeline.adapt, null when the job does not adapt
    "tta_score", "tta_base_score", "tta_ranker_score", "tta_cluster", "tta_final_loss",
    "tta_batch", "tta_method", "tta_note",
)
# The output Parquet schema: one row per input file. Lists indexed [model] or [model][crop].
OUTPUT_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("score", pa.float64()),  # ensemble mean of s_k = s_global + lambda * s_local
        ("error_kind", pa.string()),  # null when scored; else one of rayiqa.io.decode.ERROR_KINDS or a stage's
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("global_score", pa.float64()),  # mean over models of s_global
        ("local_score", pa.float64()),  # mean over models of s_local (null without crops)
        ("crop_boxes", pa.list_(pa.list_(pa.int32(), 4))),  # [x0, y0, x1, y1] per crop, end-exclusive
        ("crop_areas", pa.list_(pa.int64())),  # mask area in pixels per crop
        ("crop_weights", pa.list_(pa.float64())),  # the area weights a (sum to 1)
        ("model_ids", pa.list_(pa.string())),
        ("model_scores", pa.list_(pa.float64())),  # s_k per model
        ("global_probs", pa.list_(pa.list_(pa.float64()))),  # [model][level]
        ("crop_scores", pa.list_(pa.list_(pa.float64()))),  # [model][crop]
        ("crop_probs", pa.list_(pa.list_(pa.list_(pa.float64())))),  # [model][crop][level]
        # Test-time adaptation (adapt.method != none; else null): rayiqa.pipeline.adapt
        ("tta_score", pa.float64()),  # the adapted backbone's score
        ("tta_base_score", pa.float64()),  # the source backbone's score
        ("tta_ranker_score", pa.float64()),  # llm-tta: the ranking that formed the clusters
        ("tta_cluster", pa.string()),  # "high" / "low" / null: cluster membership in its batch
        ("tta_final_loss", pa.float64()),  # auxiliary loss at the last iteration
        ("tta_batch", pa.string()),  # adaptation batch id
        ("tta_method", pa.string()),
        ("tta_note", pa.string()),  # e.g. a short batch whose base scores were kept
    ]
)


def missing_as_none(value: object) -> object:
    """None for None / NaN scalars (how Ray Data returns an all-null column), numpy scalars as Python values."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def tta_value(batch: dict, col: str, i: int) -> object:
    """Row i's value of a TTA column for the output: None when the stage did not run or left it empty."""
    return missing_as_none(batch[col][i]) if col in batch else None


def _ok(batch: dict, i: int) -> bool:
    return not batch["error_kind"][i]  # "" between stages (an all-null column would lose its type)


def _set_error(batch: dict, i: int, kind: str, exc: BaseException) -> None:
    for col in ("error_kind", "error"):  # fixed-width numpy strings would truncate the message
        batch[col] = batch[col].astype(object)
    batch["error_kind"][i] = kind
    batch["error"][i] = f"{type(exc).__name__}: {exc}"
    log.warning("%s on %s: %s", kind, batch["path"][i], traceback.format_exception_only(exc)[-1].strip())


def object_column(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def decode_batch(batch: dict, input_cfg: InputConfig) -> dict:
    """Read each file's bytes from its filesystem and decode it to RGB; bad files become error rows that
    keep the size their header gave (0 x 0 when there was none)."""
    from rayiqa.io.fs import resolve_fs, split_uri
    from rayiqa.io.sources import read_decoded

    n = len(batch["path"])
    filesystems: dict[str, object] = {}  # one filesystem per scheme and batch
    images, widths, heights, kinds, errors = [], [], [], [], []
    for uri in map(str, batch["path"]):
        scheme, path = split_uri(uri)
        if scheme not in filesystems:
            filesystems[scheme] = resolve_fs(uri, input_cfg.storage)[0]
        res = read_decoded(uri, filesystems[scheme], path, input_cfg)
        images.append(EMPTY_IMAGE if res.image is None else res.image)
        heights.append(res.image.shape[0] if res.image is not None else res.height or 0)
        widths.append(res.image.shape[1] if res.image is not None else res.width or 0)
        kinds.append(res.error_kind or "")
        errors.append(res.error or "")
    return {
        "path": object_column([str(p) for p in batch["path"]]),
        "image": object_column(images),
        "width": np.asarray(widths, dtype=np.int32),
        "height": np.asarray(heights, dtype=np.int32),
        "error_kind": object_column(kinds),
        "error": object_column(errors),
        "boxes": object_column([NO_BOXES] * n),
        "areas": object_column([np.zeros(0, np.int64)] * n),
        "masks": object_column([np.zeros((0, 0), np.uint8)] * n),
    }


class SegmentStage:
    """The llm-iqa scorer's segment step (`CropFinder`) as an actor pool: crop boxes, mask areas (and
    packed masks if cropping by mask) per row."""

    def __init__(self, seg_cfg: SegmenterConfig, method: LLMIQAConfig):
        self._crops = CropFinder(seg_cfg, method)

    def __call__(self, batch: dict) -> dict:
        # Rebuild the per-row list columns: Ray may hand them over stacked as one ndarray.
        boxes, areas, packed = list(batch["boxes"]), list(batch["areas"]), list(batch["masks"])
        for i, image in enumerate(batch["image"]):
            if not _ok(batch, i):
                continue
            try:
                boxes[i], areas[i], masks = self._crops(image)
            except Exception as exc:  # a model failure on one image is that image's error
                _set_error(batch, i, "segment_error", exc)
                continue
            if masks:
                packed[i] = np.stack([np.packbits(m, axis=None) for m in masks])
        batch["boxes"], batch["areas"], batch["masks"] = map(object_column, (boxes, areas, packed))
        return batch


def _unpack_mask(bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def crops_of(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray) -> list[np.ndarray]:
    """The sub-images of one image: bbox crops, zero-padded outside the mask when masks are given."""
    packed = masks if len(masks) == len(boxes) else [None] * len(boxes)
    return [
        llm_iqa.crop(image, box, None if bits is None else _unpack_mask(bits, image.shape[:2]))
        for box, bits in zip(boxes, packed)
    ]


class ScoreStage:
    """One MLLM of the ensemble (the llm-iqa scorer's `LevelModel`): scores the whole image and each crop
    (every request of the block in one engine call), adds that model's columns `*_m{index}`. A dead
    engine (vLLM after a device error) ends the actor's process, so Ray Data starts a fresh actor and
    re-runs the block on it."""

    def __init__(self, mllm_cfg: MLLMConfig, method: LLMIQAConfig, index: int, last: bool = False):
        self.model = LevelModel(mllm_cfg, method)
        self.engine = self.model.engine
        self.method = method
        self.index = index
        self.last = last  # no later stage reads the pixels: drop them
        self.values = self.model.values

    def _score_rows(self, batch: dict, rows: list[int]) -> dict[int, np.ndarray]:
        """Probabilities per row (whole image first, then crops), all rows' requests in one engine call."""
        return dict(zip(rows, self.model.probs([requests_of(batch, i) for i in rows])))

    def __call__(self, batch: dict) -> dict:
        try:
            probs = score_isolated(batch, self._score_rows)
        except Exception:
            if not getattr(self.engine, "healthy", True):
                log.exception("the %s engine died; ending this actor so Ray Data restarts it", self.engine.model_id)
                os._exit(1)
            raise
        add_model_columns(batch, self.index, probs, self.values, self.method)
        return drop_pixels(batch) if self.last else batch


def drop_pixels(batch: dict) -> dict:
    """The batch without its decoded images and packed masks, once no later stage reads them, so the
    blocks queued for finalize and the write hold ~1 KiB per row instead of the image."""
    for col in ("image", "masks"):
        batch.pop(col, None)
    return batch


def score_isolated(batch: dict, score_rows) -> dict:
    """`score_rows(batch, rows) -> {row: result}` over the batch's good rows in one call; a row the model
    refuses alone (`refused_alone`) becomes a `model_error` row. Any other exception is the model's,
    not the image's: it propagates, and Ray Data re-runs the block."""
    def run(rs: list[int]) -> list:
        scored = score_rows(batch, rs)
        return [scored[i] for i in rs]

    rows = [i for i in range(len(batch["path"])) if _ok(batch, i)]
    results = refused_alone(run, rows)
    out = {}
    for i, result in zip(rows, results):
        if isinstance(result, ValueError):
            _set_error(batch, i, "model_error", result)
        else:
            out[i] = result
    return out


def requests_of(batch: dict, i: int) -> list[np.ndarray]:
    """The images one row asks about: the whole image first, then its crops."""
    image = batch["image"][i]
    return [image, *crops_of(image, batch["boxes"][i], batch["masks"][i])]


def add_model_columns(batch: dict, k: int, probs: dict[int, np.ndarray], values: np.ndarray, method: LLMIQAConfig) -> None:
    """Model k's columns `*_m{k}` from each scored row's level probabilities (whole image, then crops)."""
    n, levels = len(batch["path"]), len(values)
    # Unscored rows get empty arrays and NaN (not None), so blocks with and without them concatenate.
    g_probs, c_scores = [np.zeros(0)] * n, [np.zeros(0)] * n
    c_probs = [np.zeros((0, levels))] * n
    s_global, s_local = [float("nan")] * n, [float("nan")] * n
    for i, p in probs.items():
        g_probs[i], c_probs[i] = p[0], p[1:]
        s_global[i], c_scores[i], local = model_scores(p, batch["areas"][i], values, method)
        s_local[i] = float("nan") if local is None else local
    _set_model_columns(batch, k, g_probs, c_probs, c_scores, s_global, s_local)


def add_score_columns(batch: dict, k: int, scores: dict[int, float]) -> None:
    """Model k's columns for a scorer that gives one number per image (no levels, no crops)."""
    n = len(batch["path"])
    s_global = [float(scores[i]) if i in scores else float("nan") for i in range(n)]
    empty = [np.zeros(0)] * n
    _set_model_columns(batch, k, empty, [np.zeros((0, 0))] * n, empty, s_global, [float("nan")] * n)


def _set_model_columns(batch: dict, k: int, g_probs: list, c_probs: list, c_scores: list, s_global: list, s_local: list) -> None:
    batch[f"global_probs_m{k}"] = object_column(g_probs)
    batch[f"crop_probs_m{k}"] = object_column(c_probs)
    batch[f"crop_scores_m{k}"] = object_column(c_scores)
    batch[f"global_score_m{k}"] = np.asarray(s_global, dtype=np.float64)
    batch[f"local_score_m{k}"] = np.asarray(s_local, dtype=np.float64)


def _mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def finalize(batch: dict, model_ids: list[str], method: LLMIQAConfig) -> pa.Table:
    """Per image: s_k per model, the ensemble score, the evidence lists; the output schema exactly."""
    n = len(batch["path"])
    cols: dict[str, list] = {f.name: [] for f in OUTPUT_SCHEMA}
    ks = range(len(model_ids))
    for i in range(n):
        ok = _ok(batch, i)
        areas = np.asarray(batch["areas"][i], dtype=np.int64)
        g = [float(batch[f"global_score_m{k}"][i]) for k in ks] if ok else []
        loc = [missing_as_none(batch[f"local_score_m{k}"][i]) for k in ks] if ok else []  # NaN: no local score
        s_k, score = combine(g, loc, method.lam) if ok else ([], None)
        cols["path"].append(str(batch["path"][i]))
        cols["score"].append(score)
        cols["error_kind"].append(None if ok else str(batch["error_kind"][i]))
        cols["error"].append(None if ok else str(batch["error"][i]))
        cols["width"].append(int(batch["width"][i]))
        cols["height"].append(int(batch["height"][i]))
        cols["global_score"].append(_mean_or_none(g))
        cols["local_score"].append(_mean_or_none(loc))
        cols["crop_boxes"].append([list(map(int, b)) for b in batch["boxes"][i]] if ok else [])
        cols["crop_areas"].append(areas.tolist() if ok else [])
        cols["crop_weights"].append(llm_iqa.area_weights(areas).tolist() if ok and len(areas) else [])
        cols["model_ids"].append(list(model_ids) if ok else [])
        cols["model_scores"].append(s_k)
        cols["global_probs"].append([np.asarray(batch[f"global_probs_m{k}"][i]).tolist() for k in ks] if ok else [])
        cols["crop_scores"].append([np.asarray(batch[f"crop_scores_m{k}"][i]).tolist() for k in ks] if ok else [])
        cols["crop_probs"].append([np.asarray(batch[f"crop_probs_m{k}"][i]).tolist() for k in ks] if ok else [])
        for col in TTA_COLUMNS:
            cols[col].append(tta_value(batch, col, i))
    return pa.Table.from_pydict(cols, schema=OUTPUT_SCHEMA)
