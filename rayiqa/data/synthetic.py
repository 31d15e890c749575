"""A KADID-style synthetic set from any folder of pristine images, labelled by full-reference metrics.

`make_synthetic_set` writes reference/<ref>.png, distorted/<ref>_<type>_<level>.png and
annotations.csv; `load_synthetic` (registered as dataset `synthetic`) reads it back. Each FR metric
is one "requirement" column (PromptIQA Sec. 4.3 simulates new requirements this way) and
`<metric>_inv` is its inversion lo + hi - x over the metric's native range, with the opposite
direction (MOS <-> DMOS): `ssim_inv` is DMOS-like, `gmsd_inv` MOS-like.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from skimage import img_as_float

from rayiqa.data.annotations import find_file, read_frame, require_columns, to_score
from rayiqa.data.distortions import DISTORTIONS, apply_distortion, distortion, level_params
from rayiqa.data.fr_metrics import FR_METRICS
from rayiqa.data.rows import DatasetError, IQARow, ScoreType
from rayiqa.io.fs import Storage, absolute_root, join_path

ANNOTATION_FILE = "annotations.csv"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_FLIP: dict[ScoreType, ScoreType] = {"MOS": "DMOS", "DMOS": "MOS"}


def requirements() -> dict[str, tuple[ScoreType, tuple[float, float]]]:
    """Label column -> (direction, native range): each FR metric and its `_inv` inversion."""
    columns: dict[str, tuple[ScoreType, tuple[float, float]]] = {}
    for metric in FR_METRICS.values():
        columns[metric.name] = (metric.score_type, metric.score_range)
        columns[f"{metric.name}_inv"] = (_FLIP[metric.score_type], metric.score_range)
    return columns


def fr_labels(reference: np.ndarray, distorted: np.ndarray) -> dict[str, float]:
    """Every requirement column for one distorted image against its pristine one (uint8 RGB)."""
    ref, dist = img_as_float(reference), img_as_float(distorted)
    labels = {}
    for metric in FR_METRICS.values():
        value = metric.fn(ref, dist)
        lo, hi = metric.score_range
        labels[metric.name] = value
        labels[f"{metric.name}_inv"] = lo + hi - value
    return labels


def _stream_key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _pristine_images(src_dir: Path) -> list[Path]:
    sources = sorted(p for p in src_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not sources:
        raise DatasetError(f"{src_dir}: no images with extensions {IMAGE_EXTENSIONS}")
    stems = [p.stem for p in sources]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise DatasetError(f"{src_dir}: several images share the name(s) {duplicates}; reference ids must be unique")
    return sources


def make_synthetic_set(
    src_dir: str | Path,
    out_dir: str | Path,
    types: Sequence[str] | None = None,
    levels: int = 5,
    seed: int = 0,
) -> list[IQARow]:
    """Distort every image of `src_dir` with each type x level, label it, and write the set to `out_dir`.

    Deterministic per `seed`: the random stream depends only on (seed, reference id, type), and all
    levels of one (image, type) share it, so levels differ only in strength (same noise pattern,
    same motion direction). Returns the rows as `load_synthetic(out_dir)` reads them (score: SSIM).
    """
    src, out = Path(src_dir), Path(out_dir)
    chosen = list(types) if types is not None else list(DISTORTIONS)
    for name in chosen:
        distortion(name)
    (out / "reference").mkdir(parents=True, exist_ok=True)
    (out / "distorted").mkdir(parents=True, exist_ok=True)
    records = []
    for source in _pristine_images(src):
        ref_id = source.stem
        with Image.open(source) as opened:
            pristine = np.asarray(opened.convert("RGB"))
        reference = f"reference/{ref_id}.png"
        Image.fromarray(pristine).save(out / reference)
        for name in chosen:
            for level, param in enumerate(level_params(name, levels), start=1):
                rng = np.random.default_rng([seed, _stream_key(ref_id), _stream_key(name)])
                distorted = apply_distortion(pristine, name, param, rng)
                image = f"distorted/{ref_id}_{name}_{level:02d}.png"
                Image.fromarray(distorted).save(out / image)
                records.append(
                    {"image": image, "reference": reference, "ref_id": ref_id, "distortion": name,
                     "level": level, "param": param, **fr_labels(pristine, distorted)}
                )
    pd.DataFrame.from_records(records).to_csv(out / ANNOTATION_FILE, index=False)
    return load_synthetic(str(out))


def load_synthetic(root: str, storage: Storage = None, label: str = "ssim") -> list[IQARow]:
    """Rows of a set written by `make_synthetic_set`; `label` picks the requirement used as score."""
    columns = requirements()
    if label not in columns:
        raise DatasetError(f"synthetic: unknown label {label!r}; choose one of {sorted(columns)}")
    root = absolute_root(root)
    uri = find_file(root, (ANNOTATION_FILE,), storage, "synthetic")
    frame = read_frame(uri, storage)
    require_columns(frame, ["image", "ref_id", "distortion", "level", "param", *columns], uri)
    score_type, score_range = columns[label]
    rows = []
    for i, record in frame.iterrows():
        where = f"row {i + 2}"
        labels = {c: to_score(record[c], uri, f"{where} column {c!r}") for c in (*columns, "param")}
        rows.append(
            IQARow(
                dataset="synthetic",
                image=join_path(root, *str(record["image"]).split("/")),
                score=labels[label],
                score_type=score_type,
                score_range=score_range,
                ref_id=str(record["ref_id"]),
                distortion=str(record["distortion"]),
                level=int(record["level"]),
                labels=labels,
            )
        )
    return rows
