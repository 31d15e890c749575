"""Readers for the annotation files of IQA datasets (CSV, XLSX or its CSV export, .mat, text).

All errors are `DatasetError`s that name the file and the key (column, variable, line) at fault.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.io

from rayiqa.data.rows import DatasetError
from rayiqa.io.fs import Storage, exists, join_path, open_uri


def find_file(root: str, candidates: Sequence[str], storage: Storage, dataset: str) -> str:
    """The first of `candidates` (paths relative to root) that exists, else an error listing them."""
    for candidate in candidates:
        uri = join_path(root, candidate)
        if exists(uri, storage):
            return uri
    raise DatasetError(f"{dataset}: no annotation file under {root!r}; looked for {list(candidates)}")


def read_frame(uri: str, storage: Storage, header: int | None = 0, sheet: str | int = 0) -> pd.DataFrame:
    """A CSV or an XLSX sheet as a DataFrame; `header=None` keeps every row.

    CSV cells stay strings (so '00001.jpg' or '0001' keep their zeros); scores go through `to_score`.
    """
    with open_uri(uri, storage) as f:
        data = io.BytesIO(f.read())
    if not uri.lower().endswith((".xlsx", ".xls")):
        try:
            return pd.read_csv(data, header=header, dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DatasetError(f"{uri}: not a readable CSV file: {e}") from e
    try:
        return pd.read_excel(data, sheet_name=sheet, header=header)
    except ImportError as e:
        raise DatasetError(
            f"{uri}: reading .xlsx needs openpyxl (pip install openpyxl); "
            "or save the sheet as CSV next to it, same name with a .csv extension"
        ) from e
    except Exception as e:  # openpyxl/zipfile raise many types for a damaged workbook or a missing sheet
        raise DatasetError(f"{uri}: cannot read sheet {sheet!r}: {type(e).__name__}: {e}") from e


def frame_with_header(raw: pd.DataFrame, required: Sequence[str], uri: str) -> pd.DataFrame:
    """Re-read a header-less frame using the first row that holds every `required` name.

    For sheets whose header is not on the first line (CSIQ's `all_by_image` has title rows and an
    empty first column); names are stripped strings.
    """
    for index, values in raw.iterrows():
        names = [str(v).strip() if not _is_missing(v) else "" for v in values]
        if all(name in names for name in required):
            body = raw.iloc[raw.index.get_loc(index) + 1 :].copy()
            body.columns = names
            return body.loc[:, [n for n in names if n]].reset_index(drop=True)
    raise DatasetError(f"{uri}: no header row with columns {list(required)}")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], uri: str) -> None:
    """Raise naming the missing columns and the ones present."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{uri}: missing column(s) {missing}; found {[str(c) for c in frame.columns]}")


def to_score(value: Any, uri: str, where: str) -> float:
    """A finite float, else an error naming the file and the row/column."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{uri}: {where}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise DatasetError(f"{uri}: {where}: score {value!r} is not finite")
    return score


def read_mat(uri: str, storage: Storage, variables: Sequence[str]) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB v5 .mat file, each as an array."""
    with open_uri(uri, storage) as f:
        data = io.BytesIO(f.read())
    try:
        content = scipy.io.loadmat(data)
    except (ValueError, NotImplementedError) as e:
        raise DatasetError(f"{uri}: not a readable MATLAB v5 file: {e}") from e
    missing = [v for v in variables if v not in content]
    if missing:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DatasetError(f"{uri}: missing variable(s) {missing}; found {found}")
    return {v: content[v] for v in variables}


def mat_strings(cells: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings (any orientation) as a flat list of str."""
    return [str(np.asarray(cell).ravel()[0]) for cell in np.asarray(cells, dtype=object).ravel()]


def read_lines(uri: str, storage: Storage) -> list[str]:
    """Non-empty stripped lines of a text file."""
    with open_uri(uri, storage) as f:
        text = f.read().decode("utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def split_distortion_name(name: str) -> tuple[str, str, int]:
    """'<ref>_<type>_<level>.<ext>' (TID2013, KADID-10k, PIPAL) -> (REF, type, level)."""
    stem = name.rsplit(".", 1)[0]
    parts = stem.split("_")
    if len(parts) != 3 or not parts[2].isdigit():
        raise DatasetError(f"image name {name!r} is not <ref>_<type>_<level>.<ext>")
    return parts[0].upper(), parts[1], int(parts[2])
