"""`rayiqa eval`: join a prediction Parquet with a MOS table and report the agreement metrics."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from rayiqa.config import StorageConfig
from rayiqa.io.fs import resolve_fs
from rayiqa.methods.metrics import evaluate

KEY_COLUMNS = ("path", "name", "image", "image_name", "filename", "file")


@dataclass(frozen=True)
class EvalReport:
    metrics: dict
    matched: int
    unmatched_predictions: int
    missing_predictions: int
    pred: np.ndarray = field(repr=False, compare=False)  # the matched (prediction, MOS) pairs
    mos: np.ndarray = field(repr=False, compare=False)
    by: str | None = None  # the MOS table's column that `groups` splits on
    groups: dict[str, dict] = field(default_factory=dict)  # that column's value -> its images' SRCC, PLCC, n

    def render(self) -> str:
        m = self.metrics
        rows = [
            f"images matched  {self.matched} (predictions without MOS: {self.unmatched_predictions}, "
            f"MOS without a prediction or with an error row: {self.missing_predictions})",
            f"{'SRCC':>8} {'KRCC':>8} {'PLCC':>8} {'PLCC*':>8} {'RMSE*':>8}   (* after the {m['logistic']} logistic fit)",
            f"{m['srcc']:8.4f} {m['krcc']:8.4f} {m['plcc']:8.4f} {m['plcc_logistic']:8.4f} {m['rmse']:8.4f}",
        ]
        if self.groups:
            rows.append(f"by {self.by}:")
            rows += [f"  {name:<24} n={g['n']:<4} SRCC {g['srcc']:+.4f}  PLCC {g['plcc']:+.4f}" for name, g in self.groups.items()]
            rows.append(f"  {'mean over groups':<24} {'':6} SRCC {np.mean([g['srcc'] for g in self.groups.values()]):+.4f}")
        return "\n".join(rows)


def _read_table(uri: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A CSV file, or a Parquet file or folder (local or s3://), reading only `columns` when given."""
    fs, path = resolve_fs(uri, StorageConfig())
    if uri.endswith(".csv"):
        with fs.open_input_stream(path) as f:
            return pd.read_csv(f, usecols=columns)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns).to_pandas()


def evaluate_files(pred_uri: str, mos_uri: str, mos_column: str = "mos", key: str = "name", score_column: str = "score",
                   lower_is_better: bool = False, by: str | None = None) -> EvalReport:
    """Join on the file name (or full path) and evaluate the non-null predictions against MOS (negated when
    `lower_is_better`: DMOS, distortion levels); with `by`, also per value of that MOS-table column."""
    pred = _read_table(pred_uri, ["path", score_column])
    mos = _read_table(mos_uri)
    for column in filter(None, (mos_column, by)):
        if column not in mos:
            raise ValueError(f"MOS file {mos_uri} has no column {column!r}; columns: {list(mos.columns)}")
    mos_key = next((c for c in KEY_COLUMNS if c in mos), None)
    if mos_key is None:
        raise ValueError(f"MOS file {mos_uri} needs one of the columns {KEY_COLUMNS}")
    norm = posixpath.basename if key == "name" else (lambda s: s)
    pred = pred.assign(_key=pred["path"].map(lambda p: norm(str(p))))[["_key", score_column]].dropna()
    mos = mos.assign(_key=mos[mos_key].map(lambda p: norm(str(p))))[["_key", mos_column, *([by] if by else [])]]
    joined = pred.merge(mos, on="_key", how="inner")
    pred_values = joined[score_column].to_numpy(float)
    mos_values = joined[mos_column].to_numpy(float) * (-1.0 if lower_is_better else 1.0)
    groups = {}
    for name, index in (joined.groupby(by).indices.items() if by else []):
        if len(index) >= 3:
            g = evaluate(pred_values[index], mos_values[index])
            groups[str(name)] = {"n": g["n"], "srcc": g["srcc"], "plcc": g["plcc"]}
    return EvalReport(
        metrics=evaluate(pred_values, mos_values),
        matched=len(joined),
        unmatched_predictions=len(pred) - len(joined),
        missing_predictions=len(mos) - len(joined),
        pred=pred_values,
        mos=mos_values,
        by=by,
        groups=groups,
    )
