"""The scoring job's ray.data.llm path (vLLM engines): one row per request, a processor per MLLM,
then the requests regrouped per image.

ray.data.llm processors take one request per row, so each image row is exploded into its requests
(whole image, then crops) carrying the image's small metadata; each MLLM's processor adds its
`level_probs`; `groupby(path)` brings an image's requests back together, in request order, and the
same per-model columns and `finalize` as the in-process path make the output row. An error row
sends one tiny placeholder request so that it reaches the regroup and is written like any other.
The groupby is an all-to-all step: this path writes its Parquet once all requests are scored,
so a re-run resumes per finished run rather than per written block (see README).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from rayiqa.config import LLMIQAConfig, MLLMConfig
from rayiqa.methods import llm_iqa
from rayiqa.pipeline.stages import object_column, add_model_columns, finalize, requests_of

META = ("path", "width", "height", "error_kind", "error", "boxes", "areas")
PLACEHOLDER = np.zeros((28, 28, 3), dtype=np.uint8)  # the single request an error row sends

ProcessorFactory = Callable[..., Callable]


def explode_requests(row: dict) -> list[dict]:
    """One image row -> its request rows (`req_index` 0 = whole image, then the crops)."""
    meta = {k: row[k] for k in META}
    if row["error_kind"]:
        images = [PLACEHOLDER]
    else:
        images = requests_of({"image": [row["image"]], "boxes": [row["boxes"]], "masks": [row["masks"]]}, 0)
    return [{**meta, "req_index": j, "image": im} for j, im in enumerate(images)]


def regroup(group: dict, model_ids: list[str], method: LLMIQAConfig) -> pa.Table:
    """All requests of one image -> its output row (model k's probabilities in `level_probs_m{k}`)."""
    order = np.argsort(group["req_index"], kind="stable")
    batch = {k: object_column([group[k][order[0]]]) for k in META}
    batch["masks"] = object_column([np.zeros((0, 0), np.uint8)])
    values = llm_iqa.standard_prompt(method.levels, method.standard).level_values()
    per_model: list[dict[int, np.ndarray]] = []
    for k in range(len(model_ids)):
        probs = [group.get(f"level_probs_m{k}", [None] * len(order))[j] for j in order]
        errors = [e for e in (group.get(f"level_error_m{k}", [None] * len(order))[j] for j in order) if e]
        if batch["error_kind"][0]:
            per_model.append({})
        elif errors or any(p is None for p in probs):
            batch["error_kind"][0] = "model_error"
            batch["error"][0] = f"{model_ids[k]}: {errors[0] if errors else 'request failed in the engine'}"
            per_model.append({})
        else:
            per_model.append({0: np.stack([np.asarray(p, dtype=np.float64) for p in probs])})
    for k, probs in enumerate(per_model):
        add_model_columns(batch, k, probs if not batch["error_kind"][0] else {}, values, method)
    return finalize(batch, model_ids, method)


def score_by_requests(
    ds,
    mllms: list[MLLMConfig],
    method: LLMIQAConfig,
    model_ids: list[str],
    concurrency: tuple[int, int],
    make_processor: ProcessorFactory | None = None,
):
    """Per-image rows -> finalized output rows, scoring every request with one processor per MLLM."""
    if make_processor is None:
        from rayiqa.models.mllm.vllm_engine import build_vllm_processor as make_processor
    prompt = llm_iqa.standard_prompt(method.levels, method.standard)
    ds = ds.flat_map(explode_requests)
    keep = [*META, "req_index", "image"]
    for k, mllm in enumerate(mllms):
        processor = make_processor(mllm, prompt, "image", keep_columns=keep, concurrency=concurrency)
        ds = processor(ds).rename_columns({"level_probs": f"level_probs_m{k}", "level_error": f"level_error_m{k}"})
        keep = [*keep, f"level_probs_m{k}", f"level_error_m{k}"]
    ds = ds.drop_columns(["image"])
    return ds.groupby("path").map_groups(regroup, fn_kwargs={"model_ids": model_ids, "method": method}, batch_format="numpy")
