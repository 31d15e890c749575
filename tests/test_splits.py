"""Splits (random, by reference, repeated), the median over repeats, and min-max normalisation."""
from __future__ import annotations

from collections import Counter

import pytest

from rayiqa.data import (
    DatasetError,
    IQARow,
    median_over_repeats,
    min_max_normalize,
    normalize_split,
    random_split,
    reference_split,
    repeated_splits,
    split_rows,
)
from rayiqa.data.splits import Split, repeat_seeds


def row(i: int, score: float = 1.0, ref: str | None = None, dataset: str = "d", kind: str = "MOS") -> IQARow:
    return IQARow(dataset, f"/img/{dataset}/{i}.png", score, kind, (0.0, 100.0), ref_id=ref)  # type: ignore[arg-type]


def authentic(n: int) -> list[IQARow]:
    return [row(i, float(i)) for i in range(n)]


def synthetic(n_refs: int, per_ref: int) -> list[IQARow]:
    return [row(r * per_ref + k, float(k), ref=f"ref{r}") for r in range(n_refs) for k in range(per_ref)]


def assert_partition(split: Split, rows: list[IQARow]) -> None:
    """Every row lands exactly once, on one side."""
    assert Counter(r.image for r in split.train + split.test) == Counter(r.image for r in rows)


@pytest.mark.parametrize(("n", "n_train"), [(10, 8), (101, 81), (1162, 930)])
def test_random_split_is_80_20(n: int, n_train: int) -> None:
    rows = authentic(n)
    split = random_split(rows, seed=3)
    assert (len(split.train), len(split.test)) == (n_train, n - n_train)
    assert_partition(split, rows)


def test_random_split_is_deterministic_per_seed() -> None:
    rows = authentic(50)
    assert random_split(rows, seed=7) == random_split(rows, seed=7)
    assert random_split(rows, seed=7).train != random_split(rows, seed=8).train
    assert random_split(rows, seed=7).train != rows[:40]  # shuffled, not cut in order


def test_reference_split_keeps_references_apart() -> None:
    rows = synthetic(n_refs=25, per_ref=4)  # TID2013-like: 25 references
    for seed in range(5):
        split = reference_split(rows, seed=seed)
        train_refs, test_refs = {r.ref_id for r in split.train}, {r.ref_id for r in split.test}
        assert not train_refs & test_refs
        assert (len(train_refs), len(test_refs)) == (20, 5)
        assert (len(split.train), len(split.test)) == (80, 20)
        assert_partition(split, rows)
    assert reference_split(rows, seed=1) == reference_split(rows, seed=1)
    assert reference_split(rows, seed=1).test != reference_split(rows, seed=2).test


def test_reference_split_needs_reference_ids() -> None:
    with pytest.raises(DatasetError, match="2 of 5 rows have no ref_id"):
        reference_split(synthetic(1, 3) + authentic(2))


def test_split_rows_picks_by_reference_when_every_row_has_one() -> None:
    rows = synthetic(n_refs=10, per_ref=3)
    assert split_rows(rows, seed=4) == reference_split(rows, seed=4)
    assert split_rows(authentic(20), seed=4) == random_split(authentic(20), seed=4)
    assert split_rows(rows, seed=4, by_reference=False) == random_split(rows, seed=4)


def test_repeated_splits_use_their_own_seeds() -> None:
    rows = synthetic(n_refs=10, per_ref=2)
    splits = repeated_splits(rows, repeats=10, seed=123)
    seeds = repeat_seeds(123, 10)
    assert [s.seed for s in splits] == seeds and len(set(seeds)) == 10
    assert splits == [reference_split(rows, seed=s) for s in seeds]
    assert len({tuple(sorted(r.ref_id for r in s.test)) for s in splits}) > 1
    assert repeated_splits(rows, repeats=10, seed=123) == splits


def test_median_over_repeats_known_answers() -> None:
    results = [{"srcc": 0.90, "plcc": 0.80}, {"srcc": 0.70, "plcc": 0.95}, {"srcc": 0.85, "plcc": 0.60}]
    assert median_over_repeats(results) == {"plcc": 0.80, "srcc": 0.85}
    assert median_over_repeats(results + [{"srcc": 0.95, "plcc": 0.90}]) == pytest.approx({"plcc": 0.85, "srcc": 0.875})
    with pytest.raises(DatasetError, match="repeat 1 has metrics"):
        median_over_repeats([{"srcc": 1.0}, {"plcc": 1.0}])


def test_min_max_normalisation_known_answer() -> None:
    rows = [row(0, 2.0), row(1, 4.0), row(2, 6.0)]
    normalized = min_max_normalize(rows)
    assert [r.score for r in normalized] == [0.0, 0.5, 1.0]
    assert [r.labels["raw_score"] for r in normalized] == [2.0, 4.0, 6.0]
    assert {r.score_range for r in normalized} == {(0.0, 1.0)}
    assert [r.score for r in rows] == [2.0, 4.0, 6.0]  # inputs untouched


def test_dmos_inversion_is_optional() -> None:
    rows = [row(0, 10.0, kind="DMOS"), row(1, 25.0, kind="DMOS"), row(2, 30.0, kind="DMOS")]
    kept = min_max_normalize(rows)
    assert [r.score for r in kept] == [0.0, 0.75, 1.0] and {r.score_type for r in kept} == {"DMOS"}
    flipped = min_max_normalize(rows, invert_dmos=True)
    assert [r.score for r in flipped] == [1.0, 0.25, 0.0] and {r.score_type for r in flipped} == {"MOS"}
    mos = min_max_normalize([row(0, 1.0), row(1, 3.0)], invert_dmos=True)
    assert [r.score for r in mos] == [0.0, 1.0]  # MOS rows are never flipped


def test_normalisation_is_per_dataset() -> None:
    rows = [row(0, 1.0, dataset="a"), row(1, 100.0, dataset="b"), row(2, 3.0, dataset="a"), row(3, 50.0, dataset="b")]
    assert [r.score for r in min_max_normalize(rows)] == [0.0, 1.0, 1.0, 0.0]


def test_constant_scores_cannot_be_normalised() -> None:
    with pytest.raises(DatasetError, match="all 2 scores equal 5.0"):
        min_max_normalize([row(0, 5.0), row(1, 5.0)])


def test_normalize_split_fits_train_and_test_separately() -> None:
    split = Split(train=[row(0, 1.0), row(1, 2.0), row(2, 3.0)], test=[row(3, 10.0), row(4, 20.0)], seed=0)
    normalized = normalize_split(split)
    assert [r.score for r in normalized.train] == [0.0, 0.5, 1.0]
    assert [r.score for r in normalized.test] == [0.0, 1.0]
    assert normalized.seed == 0
