"""Train/test splits and label normalisation, as PromptIQA (Sec. 4.1 C) and GRMP-IQA (Sec. 4.1) use them.

80/20 random splits for authentic datasets; splits by reference image for synthetic ones (no
reference content on both sides); N repeats with their own seeds and the median over repeats;
min-max normalisation fitted on each split's own scores, per dataset.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from rayiqa.data.rows import DatasetError, IQARow


@dataclass(frozen=True)
class Split:
    """One train/test partition and the seed that drew it."""

    train: list[IQARow]
    test: list[IQARow]
    seed: int


def _n_train(n: int, train_fraction: float) -> int:
    if not 0.0 < train_fraction < 1.0:
        raise DatasetError(f"train_fraction must be in (0, 1), got {train_fraction}")
    return int(round(train_fraction * n))


def random_split(rows: Sequence[IQARow], train_fraction: float = 0.8, seed: int = 0) -> Split:
    """Shuffle images with `seed` and cut at round(train_fraction * n)."""
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = _n_train(len(rows), train_fraction)
    return Split([rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]], seed)


def reference_split(rows: Sequence[IQARow], train_fraction: float = 0.8, seed: int = 0) -> Split:
    """Shuffle the reference ids with `seed`; round(train_fraction * refs) of them go to train."""
    missing = sum(row.ref_id is None for row in rows)
    if missing:
        raise DatasetError(f"reference_split: {missing} of {len(rows)} rows have no ref_id")
    refs = sorted({row.ref_id for row in rows})
    order = np.random.default_rng(seed).permutation(len(refs))
    train_refs = {refs[i] for i in order[: _n_train(len(refs), train_fraction)]}
    return Split([r for r in rows if r.ref_id in train_refs], [r for r in rows if r.ref_id not in train_refs], seed)


def split_rows(
    rows: Sequence[IQARow], train_fraction: float = 0.8, seed: int = 0, by_reference: bool | None = None
) -> Split:
    """`reference_split` when asked, or (by default) when every row has a reference id; else random."""
    if by_reference is None:
        by_reference = bool(rows) and all(row.ref_id is not None for row in rows)
    return (reference_split if by_reference else random_split)(rows, train_fraction, seed)


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    """`repeats` independent 32-bit seeds derived from one seed (numpy SeedSequence)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(repeats)]


def repeated_splits(
    rows: Sequence[IQARow],
    repeats: int = 10,
    seed: int = 0,
    train_fraction: float = 0.8,
    by_reference: bool | None = None,
) -> list[Split]:
    """`repeats` splits, each drawn with its own seed from `repeat_seeds(seed, repeats)`."""
    return [split_rows(rows, train_fraction, s, by_reference) for s in repeat_seeds(seed, repeats)]


def median_over_repeats(results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Median of each metric (e.g. SRCC, PLCC) over the per-repeat results: the number papers report."""
    if not results:
        raise DatasetError("median_over_repeats: no results")
    keys = set(results[0])
    for i, result in enumerate(results):
        if set(result) != keys:
            raise DatasetError(f"median_over_repeats: repeat {i} has metrics {sorted(result)}, expected {sorted(keys)}")
    return {key: float(statistics.median(r[key] for r in results)) for key in sorted(keys)}


def min_max_normalize(rows: Sequence[IQARow], invert_dmos: bool = False) -> list[IQARow]:
    """Scores -> (s - min) / (max - min) in [0, 1], min and max taken per dataset over these rows.

    With `invert_dmos`, DMOS datasets become 1 - that, so higher = better for all rows, and their
    score_type becomes MOS. The raw score is kept as label 'raw_score'. Order is preserved.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        groups[row.dataset].append(row.score)
    bounds = {}
    for dataset, scores in groups.items():
        lo, hi = min(scores), max(scores)
        if hi == lo:
            raise DatasetError(f"{dataset}: cannot min-max normalise, all {len(scores)} scores equal {lo}")
        bounds[dataset] = (lo, hi)
    normalized = []
    for row in rows:
        lo, hi = bounds[row.dataset]
        score = (row.score - lo) / (hi - lo)
        flip = invert_dmos and row.score_type == "DMOS"
        normalized.append(
            replace(
                row,
                score=1.0 - score if flip else score,
                score_type="MOS" if flip else row.score_type,
                score_range=(0.0, 1.0),
                labels={**row.labels, "raw_score": row.score},
            )
        )
    return normalized


def normalize_split(split: Split, invert_dmos: bool = False) -> Split:
    """Min-max normalise train and test independently, each on its own scores (PromptIQA Sec. 4.1 C)."""
    return Split(min_max_normalize(split.train, invert_dmos), min_max_normalize(split.test, invert_dmos), split.seed)
