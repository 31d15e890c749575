"""IQA datasets: the registry of official annotation formats, splits, and the synthetic generator.

Names are imported on first use (PEP 562): a Ray Data loader task or Ray Train's dataset actors that
only need `DatasetError` or the row type must not pay for scipy and the MATLAB loader (~2 s per
fresh process on 2 cores).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "dataset_info": "registry", "dataset_names": "registry", "load_dataset": "registry",
    "DatasetError": "rows", "IQARow": "rows", "from_arrow": "rows", "to_arrow": "rows",
    "Split": "splits", "median_over_repeats": "splits", "min_max_normalize": "splits", "normalize_split": "splits",
    "random_split": "splits", "reference_split": "splits", "repeated_splits": "splits", "split_rows": "splits",
    "make_synthetic_set": "synthetic",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = list(_HOMES)
