"""Datasets annotated by one CSV/XLSX table with a row per image (and CSIQ's DMOS workbook).

Formats were read from the datasets' reference loaders (pyiqa's meta-info scripts, PromptIQA's
`folders.py`, the datasets' READMEs); `UNCONFIRMED` in a spec's note marks what could not be
checked against the official release (image folder names, mostly): override with `image_dir=`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from rayiqa.data.annotations import (
    find_file,
    frame_with_header,
    read_frame,
    require_columns,
    split_distortion_name,
    to_score,
)
from rayiqa.data.rows import DatasetError, IQARow, ScoreType
from rayiqa.io.fs import Storage, absolute_root, join_path


def _numbered(template: str) -> Callable[[Any], str]:
    """A cell holding an image number -> its file name (e.g. 12 -> 'DatabaseImage0012.JPG')."""

    def name(cell: Any) -> str:
        return template.format(int(float(cell)))

    return name


@dataclass(frozen=True)
class TableSpec:
    """How one dataset's table maps to rows. Columns are names, or positions (int) where the
    official header is not stable (BID, UWIQA: first column image number, second the score)."""

    dataset: str
    files: tuple[str, ...]  # candidate annotation files under root; the first that exists is read
    image_dir: str  # folder of the images, relative to root
    image: str | int
    score: str | int
    score_type: ScoreType
    score_range: tuple[float, float]
    labels: tuple[str, ...] = ()  # extra numeric columns kept in `IQARow.labels` when present
    image_name: Callable[[Any], str] = str
    has_distortion_names: bool = False  # names are <ref>_<type>_<level>.<ext>
    note: str = ""


def _column(frame: pd.DataFrame, column: str | int, uri: str) -> pd.Series:
    if isinstance(column, int):
        if column >= frame.shape[1]:
            raise DatasetError(f"{uri}: needs at least {column + 1} columns, found {frame.shape[1]}")
        return frame.iloc[:, column]
    require_columns(frame, [column], uri)
    return frame[column]


def load_table(spec: TableSpec, root: str, storage: Storage = None, image_dir: str | None = None) -> list[IQARow]:
    """Rows of a one-row-per-image table; padding rows (no image, no score) are skipped."""
    root = absolute_root(root)
    uri = find_file(root, spec.files, storage, spec.dataset)
    frame = read_frame(uri, storage)
    names, scores = _column(frame, spec.image, uri), _column(frame, spec.score, uri)
    label_columns = [c for c in spec.labels if c in frame.columns]
    folder = spec.image_dir if image_dir is None else image_dir
    rows = []
    for i, (cell, raw_score) in enumerate(zip(names, scores, strict=True)):
        where = f"row {i + 2}"  # spreadsheet numbering: header is row 1
        if pd.isna(cell) and pd.isna(raw_score):
            continue
        if pd.isna(cell):
            raise DatasetError(f"{uri}: {where}: column {spec.image!r} (image) is empty")
        try:
            name = spec.image_name(cell)
        except (TypeError, ValueError):
            raise DatasetError(f"{uri}: {where}: column {spec.image!r}: bad image id {cell!r}") from None
        ref, distortion, level = split_distortion_name(name) if spec.has_distortion_names else (None, None, None)
        labels = {
            c: to_score(frame[c].iloc[i], uri, f"{where} column {c!r}")
            for c in label_columns
            if not pd.isna(frame[c].iloc[i])
        }
        rows.append(
            IQARow(
                dataset=spec.dataset,
                image=join_path(root, folder, name) if folder else join_path(root, name),
                score=to_score(raw_score, uri, f"{where} column {spec.score!r}"),
                score_type=spec.score_type,
                score_range=spec.score_range,
                ref_id=ref,
                distortion=distortion,
                level=level,
                labels=labels,
            )
        )
    return rows


KADID10K = TableSpec(
    "kadid10k", ("dmos.csv",), "images", "dist_img", "dmos", "MOS", (1.0, 5.0), labels=("var",),
    has_distortion_names=True,
    note="The column is called 'dmos' but holds MOS-like values (higher = better), 1-5.",
)
KONIQ10K = TableSpec(
    "koniq10k", ("koniq10k_scores_and_distributions.csv",), "1024x768", "image_name", "MOS_zscore", "MOS",
    (0.0, 100.0), labels=("MOS", "SD", "c1", "c2", "c3", "c4", "c5", "c_total"),
    note="Score is MOS_zscore (0-100); the 1-5 'MOS' column is kept as a label.",
)
SPAQ = TableSpec(
    "spaq", ("Annotations/MOS and Image attribute scores.xlsx", "Annotations/MOS and Image attribute scores.csv"),
    "TestImage", "Image name", "MOS", "MOS", (0.0, 100.0),
    labels=("Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"),
    note="Attribute columns kept when present. UNCONFIRMED: image folder 'TestImage'.",
)
BID = TableSpec(
    "bid", ("DatabaseGrades.xlsx", "DatabaseGrades.csv"), "", 0, 1, "MOS", (0.0, 5.0),
    image_name=_numbered("DatabaseImage{:04d}.JPG"),
    note="UNCONFIRMED: header names (read by position) and images directly under root.",
)
GFIQA20K = TableSpec(
    "gfiqa20k", ("mos.csv",), "image", "img_name", "mos", "MOS", (0.0, 1.0),
    note="UNCONFIRMED against the official release (from PromptIQA's loader).",
)
AGIQA3K = TableSpec(
    "agiqa3k", ("data.csv",), "img", "name", "mos_quality", "MOS", (0.0, 5.0),
    labels=("std_quality", "mos_align", "std_align"),
    note="UNCONFIRMED: image folder 'img' (PromptIQA's layout) and the 0-5 range.",
)
UWIQA = TableSpec(
    "uwiqa", ("IQA_Value.xlsx", "IQA_Value.csv"), "img", 0, 1, "MOS", (0.0, 1.0),
    image_name=_numbered("{:04d}.png"),
    note="UNCONFIRMED against the official release (from PromptIQA's loader).",
)
PKU_AIGIQA4K = TableSpec(
    "pku_aigiqa4k", ("annotation.xlsx", "annotation.csv"), "All", "Generated_image", "MOS_q", "MOS", (0.0, 5.0),
    labels=("MOS_a", "MOS_c"),
    note="MOS_q = quality; MOS_a/MOS_c (authenticity/correspondence) kept as labels. UNCONFIRMED: 0-5 range.",
)
FLIVE = TableSpec(
    "flive", ("labels_image.csv",), "database", "name", "mos", "MOS", (0.0, 100.0),
    note="Whole-image labels of the FLIVE/PaQ-2-PiQ database; patch labels are not loaded.",
)
TABLE_SPECS: dict[str, TableSpec] = {
    s.dataset: s for s in (KADID10K, KONIQ10K, SPAQ, BID, GFIQA20K, AGIQA3K, UWIQA, PKU_AIGIQA4K, FLIVE)
}

# CSIQ: dst_type in csiq.DMOS.xlsx -> (folder under dst_imgs/, token in the file name)
CSIQ_TYPES = {
    "noise": ("awgn", "AWGN"),
    "jpeg": ("jpeg", "JPEG"),
    "jpeg 2000": ("jpeg2000", "jpeg2000"),
    "fnoise": ("fnoise", "fnoise"),
    "blur": ("blur", "BLUR"),
    "contrast": ("contrast", "contrast"),
}
CSIQ_COLUMNS = ("image", "dst_type", "dst_lev", "dmos")


def _csiq_image_id(cell: Any) -> str:
    if isinstance(cell, float) and cell.is_integer():
        cell = int(cell)
    return str(cell).strip().removesuffix(".png")


def load_csiq(root: str, storage: Storage = None) -> list[IQARow]:
    """CSIQ from `csiq.DMOS.xlsx`, sheet `all_by_image` (or its CSV export `csiq.DMOS.csv`).

    Images: dst_imgs/<folder>/<image>.<TOKEN>.<level>.png; DMOS in [0, 1], higher = worse.
    """
    root = absolute_root(root)
    uri = find_file(root, ("csiq.DMOS.xlsx", "csiq.DMOS.csv"), storage, "csiq")
    frame = frame_with_header(read_frame(uri, storage, header=None, sheet="all_by_image"), CSIQ_COLUMNS, uri)
    rows = []
    for i, record in frame.iterrows():
        where = f"data row {i + 1}"
        if all(pd.isna(record[c]) for c in CSIQ_COLUMNS):
            continue
        kind = str(record["dst_type"]).strip().lower()
        if kind not in CSIQ_TYPES:
            raise DatasetError(f"{uri}: {where}: unknown dst_type {kind!r}; known {sorted(CSIQ_TYPES)}")
        folder, token = CSIQ_TYPES[kind]
        image_id = _csiq_image_id(record["image"])
        level = int(to_score(record["dst_lev"], uri, f"{where} column 'dst_lev'"))
        std = record.get("dmos_std")
        labels = {} if std is None or pd.isna(std) else {"dmos_std": to_score(std, uri, f"{where} column 'dmos_std'")}
        rows.append(
            IQARow(
                dataset="csiq",
                image=join_path(root, "dst_imgs", folder, f"{image_id}.{token}.{level}.png"),
                score=to_score(record["dmos"], uri, f"{where} column 'dmos'"),
                score_type="DMOS",
                score_range=(0.0, 1.0),
                ref_id=image_id,
                distortion=folder,
                level=level,
                labels=labels,
            )
        )
    return rows
