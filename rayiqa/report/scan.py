"""Read a score run's Parquet for the report in bounded memory: only the columns a figure needs,
streamed over record batches, with counts, extremes and samples accumulated per batch.

Two passes over the narrow columns: the first counts rows and errors, keeps the N lowest and
highest scores (pyarrow's select_k over the batch plus the candidates so far), a uniform sample
of points for the scatter plots and the first few TTA batches, and finds each score's range; the
second bins the scores into histograms with those ranges. The N + N rows shown as thumbnails are
then read once more with their crop columns, filtered on their paths.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

BATCH_ROWS = 65_536
EXAMPLES_PER_KIND = 3  # error rows quoted per kind
SAMPLE_POINTS = 5_000  # points per scatter plot
TTA_BATCHES = 8  # adaptation batches drawn
BINS = 40
PASS1 = ("path", "score", "error_kind", "error", "global_score", "local_score", "model_ids", "model_scores",
         "tta_score", "tta_base_score", "tta_ranker_score", "tta_cluster", "tta_batch")
DETAIL = ("path", "score", "width", "height", "global_score", "local_score", "crop_boxes", "crop_scores", "global_probs")
ORDER = {"worst": "ascending", "best": "descending"}  # ties: by path, ascending


@dataclass(frozen=True)
class Histogram:
    edges: np.ndarray
    counts: np.ndarray


class Sample:
    """A uniform random sample of at most `size` rows of some columns, whatever the row count:
    each row draws a random key and the `size` smallest keys are kept."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.rng, self.seen = size, np.random.default_rng(seed), 0
        self.keys = np.empty(0)
        self.columns: dict[str, np.ndarray] = {}

    def add(self, columns: dict[str, np.ndarray]) -> None:
        n = len(next(iter(columns.values())))
        self.seen += n
        keys = np.concatenate([self.keys, self.rng.random(n)])
        merged = {c: np.concatenate([self.columns[c], v]) if c in self.columns else v for c, v in columns.items()}
        keep = np.argpartition(keys, self.size)[: self.size] if keys.size > self.size else np.arange(keys.size)
        self.keys, self.columns = keys[keep], {c: v[keep] for c, v in merged.items()}


@dataclass
class RunData:
    """Everything the report shows that comes from the Parquet rows."""

    rows: int = 0
    errors: Counter = field(default_factory=Counter)
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # kind -> [(path, message)]
    model_ids: list[str] = field(default_factory=list)
    ranges: dict[str, list[float]] = field(default_factory=dict)  # column -> [min, max] of its finite values
    hists: dict[str, Histogram] = field(default_factory=dict)  # "score", "model 0", ...
    local: Sample = field(default_factory=lambda: Sample(SAMPLE_POINTS))  # global_score vs local_score
    tta: Sample = field(default_factory=lambda: Sample(SAMPLE_POINTS))  # tta_base_score vs tta_score
    tta_batches: dict[str, list[dict]] = field(default_factory=dict)  # batch id -> its rows
    extremes: dict[str, list[dict]] = field(default_factory=dict)  # "worst"/"best" -> detail rows, in order

    @property
    def scored(self) -> int:
        return self.rows - sum(self.errors.values())


def open_output(fs, root: str) -> pads.Dataset:
    """The run's Parquet parts (pyarrow skips `_`-prefixed files and folders: manifest, inputs, report)."""
    try:
        ds = pads.dataset(root, filesystem=fs, format="parquet")
    except FileNotFoundError as e:
        raise ValueError(f"{root}: no such output folder") from e
    if not ds.files:
        raise ValueError(f"{root}: no Parquet parts (is it the output.uri of a `rayiqa score` run?)")
    return ds


def _batches(ds: pads.Dataset, columns, **kw):
    names = [c for c in columns if c in ds.schema.names]  # outputs from before the TTA columns lack them
    return ds.to_batches(columns=names, batch_size=BATCH_ROWS, batch_readahead=1, fragment_readahead=1, **kw)


def _floats(column: pa.Array) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def _model_matrix(column: pa.Array, models: int) -> np.ndarray:
    """(rows, models) scores of the rows that have one per model."""
    full = column.filter(pc.equal(pc.list_value_length(column), models))
    return _floats(pc.list_flatten(full)).reshape(-1, models)


def _track_range(data: RunData, name: str, values: np.ndarray) -> None:
    values = values[np.isfinite(values)]
    if values.size:
        lo, hi = data.ranges.get(name, [np.inf, -np.inf])
        data.ranges[name] = [min(lo, float(values.min())), max(hi, float(values.max()))]


def _keep_extremes(current: pa.Table | None, batch: pa.RecordBatch, n: int, order: str) -> pa.Table:
    """The n rows of (current + batch) with the lowest/highest score, ties by path."""
    score = batch.column("score")
    valid = pc.and_kleene(pc.is_valid(score), pc.invert(pc.is_nan(score)))
    table = pa.Table.from_batches([batch.select(["path", "score"]).filter(valid)])
    if current is not None:
        table = pa.concat_tables([current, table])
    keys = [("score", order), ("path", "ascending")]
    return table.take(pc.select_k_unstable(table, k=min(n, table.num_rows), sort_keys=keys)) if table.num_rows else table


def _count_errors(data: RunData, batch: pa.RecordBatch) -> None:
    kinds = batch.column("error_kind")
    bad = batch.filter(pc.is_valid(kinds))
    if not bad.num_rows:
        return
    data.errors.update(dict(zip(*[v.to_pylist() for v in pc.value_counts(bad.column("error_kind")).flatten()])))
    for path, kind, msg in zip(*(bad.column(c).to_pylist() for c in ("path", "error_kind", "error"))):
        quoted = data.examples.setdefault(kind, [])
        if len(quoted) < EXAMPLES_PER_KIND:
            quoted.append((path, msg or ""))


def _add_tta_batches(data: RunData, batch: pa.RecordBatch) -> None:
    """Keep every row of the first TTA_BATCHES adaptation batch ids met."""
    ids = batch.column("tta_batch")
    for bid in pc.unique(ids.filter(pc.is_valid(ids))).to_pylist():
        if bid not in data.tta_batches and len(data.tta_batches) < TTA_BATCHES:
            data.tta_batches[bid] = []
    wanted = pa.array(list(data.tta_batches), pa.string())
    columns = ["path", "tta_ranker_score", "tta_base_score", "tta_score", "tta_cluster", "tta_batch"]
    rows = batch.filter(pc.is_in(ids, value_set=wanted)).select(columns)
    for row in rows.to_pylist():
        data.tta_batches[row["tta_batch"]].append(row)


def _first_pass(ds: pads.Dataset, n: int) -> tuple[RunData, dict[str, pa.Table | None]]:
    data, extremes = RunData(), {name: None for name in ORDER}
    has_tta = "tta_score" in ds.schema.names
    for batch in _batches(ds, PASS1):
        data.rows += batch.num_rows
        _count_errors(data, batch)
        if not data.model_ids:
            ids = batch.column("model_ids").drop_null().to_pylist()
            data.model_ids = next((m for m in ids if m), [])
        for name, order in ORDER.items():
            extremes[name] = _keep_extremes(extremes[name], batch, n, order)
        score, glob, local = (_floats(batch.column(c)) for c in ("score", "global_score", "local_score"))
        _track_range(data, "score", np.concatenate([score, _floats(pc.list_flatten(batch.column("model_scores")))]))
        both = np.isfinite(glob) & np.isfinite(local)
        if both.any():
            data.local.add({"global": glob[both], "local": local[both]})
        if has_tta:
            base, adapted = _floats(batch.column("tta_base_score")), _floats(batch.column("tta_score"))
            both = np.isfinite(base) & np.isfinite(adapted)
            if both.any():
                cluster = batch.column("tta_cluster").fill_null("").to_numpy(zero_copy_only=False)
                data.tta.add({"base": base[both], "adapted": adapted[both], "cluster": cluster[both]})
                _add_tta_batches(data, batch)
    return data, extremes


def _edges(lo_hi: list[float]) -> np.ndarray:
    lo, hi = lo_hi
    if hi - lo < 1e-9:  # one distinct value: a unit-wide bin around it
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, BINS + 1)


def _second_pass(ds: pads.Dataset, data: RunData) -> None:
    """Histograms of the score and, for an ensemble, of each model's s_k, binned batch by batch."""
    models = len(data.model_ids) if len(data.model_ids) > 1 else 0
    if "score" not in data.ranges:
        return
    edges = _edges(data.ranges["score"])  # one axis for the ensemble and its models' s_k
    counts = {"score": np.zeros(BINS, np.int64), **{f"model {m}": np.zeros(BINS, np.int64) for m in range(models)}}
    columns = ["score", "model_scores"] if models else ["score"]
    for batch in _batches(ds, columns):
        values = {"score": _floats(batch.column("score"))}
        if models:
            matrix = _model_matrix(batch.column("model_scores"), models)
            values |= {f"model {m}": matrix[:, m] for m in range(models)}
        for name, v in values.items():
            counts[name] += np.histogram(v[np.isfinite(v)], bins=edges)[0]
    data.hists = {name: Histogram(edges, c) for name, c in counts.items()}


def _details(ds: pads.Dataset, extremes: dict[str, pa.Table | None]) -> dict[str, list[dict]]:
    """The shown rows with their crop columns, in report order; a path written twice keeps its shown score."""
    ordered = {name: [] if t is None else t.sort_by([("score", ORDER[name]), ("path", "ascending")]).to_pylist()
               for name, t in extremes.items()}
    paths = sorted({r["path"] for rows in ordered.values() for r in rows})
    found: dict[tuple[str, float], dict] = {}
    if paths:
        for batch in _batches(ds, DETAIL, filter=pc.field("path").isin(paths)):
            for row in batch.to_pylist():
                found.setdefault((row["path"], row["score"]), row)
    return {name: [found[(r["path"], r["score"])] for r in rows] for name, rows in ordered.items()}


def scan_output(ds: pads.Dataset, n: int) -> RunData:
    """All the report's figures' data from a run's Parquet, N lowest and N highest scores included."""
    data, extremes = _first_pass(ds, n)
    _second_pass(ds, data)
    data.extremes = _details(ds, extremes)
    return data
