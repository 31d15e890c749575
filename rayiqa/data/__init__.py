"""IQA datasets: the registry of official annotation formats, splits, and the synthetic generator."""
from rayiqa.data.registry import dataset_info, dataset_names, load_dataset
from rayiqa.data.rows import DatasetError, IQARow, from_arrow, to_arrow
from rayiqa.data.splits import (
    Split,
    median_over_repeats,
    min_max_normalize,
    normalize_split,
    random_split,
    reference_split,
    repeated_splits,
    split_rows,
)
from rayiqa.data.synthetic import make_synthetic_set

__all__ = [
    "DatasetError",
    "IQARow",
    "Split",
    "dataset_info",
    "dataset_names",
    "from_arrow",
    "load_dataset",
    "make_synthetic_set",
    "median_over_repeats",
    "min_max_normalize",
    "normalize_split",
    "random_split",
    "reference_split",
    "repeated_splits",
    "split_rows",
    "to_arrow",
]
