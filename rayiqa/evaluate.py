"""`rayiqa eval`: join a prediction Parquet with a MOS table and report the agreement metrics."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pandas as pd
import pyarrow.dataset as pads

from rayiqa.methods.metrics import evaluate

KEY_COLUMNS = ("path", "name", "image", "image_name", "filename", "file")


@dataclass(frozen=True)
class EvalReport:
    metrics: dict
    matched: int
    unmatched_predictions: int
    missing_predictions: int

    def render(self) -> str:
        m = self.metrics
        rows = [
            f"images matched  {self.matched} (predictions without MOS: {self.unmatched_predictions}, "
            f"MOS without a prediction or with an error row: {self.missing_predictions})",
            f"{'SRCC':>8} {'KRCC':>8} {'PLCC':>8} {'PLCC*':>8} {'RMSE*':>8}   (* after the {m['logistic']} logistic fit)",
            f"{m['srcc']:8.4f} {m['krcc']:8.4f} {m['plcc']:8.4f} {m['plcc_logistic']:8.4f} {m['rmse']:8.4f}",
        ]
        return "\n".join(rows)


def _read_table(uri: str) -> pd.DataFrame:
    if uri.endswith(".csv"):
        return pd.read_csv(uri)
    return pads.dataset(uri, format="parquet").to_table().to_pandas()


def evaluate_files(pred_uri: str, mos_uri: str, mos_column: str = "mos", key: str = "name", score_column: str = "score") -> EvalReport:
    """Join on the file name (or full path) and evaluate the non-null predictions against MOS."""
    pred = _read_table(pred_uri)
    mos = _read_table(mos_uri)
    if mos_column not in mos:
        raise ValueError(f"MOS file {mos_uri} has no column {mos_column!r}; columns: {list(mos.columns)}")
    mos_key = next((c for c in KEY_COLUMNS if c in mos), None)
    if mos_key is None:
        raise ValueError(f"MOS file {mos_uri} needs one of the columns {KEY_COLUMNS}")
    norm = posixpath.basename if key == "name" else (lambda s: s)
    pred = pred.assign(_key=pred["path"].map(lambda p: norm(str(p))))[["_key", score_column]].dropna()
    mos = mos.assign(_key=mos[mos_key].map(lambda p: norm(str(p))))[["_key", mos_column]]
    joined = pred.merge(mos, on="_key", how="inner")
    metrics = evaluate(joined[score_column].to_numpy(float), joined[mos_column].to_numpy(float))
    return EvalReport(
        metrics=metrics,
        matched=len(joined),
        unmatched_predictions=len(pred) - len(joined),
        missing_predictions=len(mos) - len(joined),
    )
