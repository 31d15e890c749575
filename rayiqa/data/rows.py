"""The one row type of the dataset layer: an image URI with its subjective (or FR) score.

Every loader returns `list[IQARow]`; splits and normalisation take and give the same. Trainers turn
a list into a Ray dataset with `to_arrow` (one Arrow table, one row per image).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import pyarrow as pa

ScoreType = Literal["MOS", "DMOS"]


class DatasetError(ValueError):
    """An annotation that cannot be used; the message names the dataset, file and key at fault."""


@dataclass(frozen=True)
class IQARow:
    """One annotated image.

    `score_type` says the direction: MOS = higher is better, DMOS = higher is worse. `score_range`
    is the dataset's native (lo, hi) scale. `ref_id` names the pristine image of synthetic sets
    (None for authentic ones); `distortion`/`level` are kept where the dataset has them.
    `labels` holds the other numeric columns of the annotation (std, attribute scores, FR labels).
    """

    dataset: str
    image: str
    score: float
    score_type: ScoreType
    score_range: tuple[float, float]
    ref_id: str | None = None
    distortion: str | None = None
    level: int | None = None
    labels: Mapping[str, float] = field(default_factory=dict)


ARROW_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("image", pa.string()),
        ("score", pa.float64()),
        ("score_type", pa.string()),
        ("score_lo", pa.float64()),
        ("score_hi", pa.float64()),
        ("ref_id", pa.string()),
        ("distortion", pa.string()),
        ("level", pa.int64()),
        ("labels", pa.map_(pa.string(), pa.float64())),
    ]
)


def to_arrow(rows: Sequence[IQARow]) -> pa.Table:
    """Rows -> one Arrow table (labels as a string->double map), ready for `ray.data.from_arrow`."""
    records = []
    for row in rows:
        record = asdict(row)
        record["score_lo"], record["score_hi"] = record.pop("score_range")
        record["labels"] = list(row.labels.items())
        records.append(record)
    return pa.Table.from_pylist(records, schema=ARROW_SCHEMA)


def from_arrow(table: pa.Table) -> list[IQARow]:
    """Inverse of `to_arrow`."""
    rows = []
    for record in table.to_pylist():
        lo, hi = record.pop("score_lo"), record.pop("score_hi")
        labels = dict(record.pop("labels") or [])
        rows.append(IQARow(score_range=(lo, hi), labels=labels, **record))
    return rows
