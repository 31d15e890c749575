"""One registry of IQA datasets: `load_dataset(name, root)` turns official annotation files into rows.

Names are matched case- and punctuation-insensitively ("KADID-10k" == "kadid10k"); aliases cover
the names used in the papers (LIVEC = LIVE Challenge, FLIVE = LIVEFB).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from rayiqa.data.formats.matlab import load_aigciqa2023, load_live, load_livec
from rayiqa.data.formats.tables import TABLE_SPECS, load_csiq, load_table
from rayiqa.data.formats.text import load_pipal, load_tid2013
from rayiqa.data.rows import DatasetError, IQARow
from rayiqa.data.synthetic import load_synthetic
from rayiqa.io.fs import Storage


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: its loader, whether rows carry reference ids, and loader options."""

    name: str
    loader: Callable[..., list[IQARow]]
    has_references: bool  # synthetic distortions: split by reference image
    options: tuple[str, ...] = ()


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("live", load_live, True),
        DatasetInfo("csiq", load_csiq, True),
        DatasetInfo("tid2013", load_tid2013, True),
        DatasetInfo("pipal", load_pipal, True, ("image_dir",)),
        DatasetInfo("livec", load_livec, False),
        DatasetInfo("aigciqa2023", load_aigciqa2023, False),
        DatasetInfo("synthetic", load_synthetic, True, ("label",)),
        *(
            DatasetInfo(name, partial(load_table, spec), spec.has_distortion_names, ("image_dir",))
            for name, spec in TABLE_SPECS.items()
        ),
    )
}
ALIASES = {"livechallenge": "livec", "clive": "livec", "livefb": "flive", "koniq": "koniq10k", "kadid": "kadid10k",
           "gfiqa": "gfiqa20k", "pkuaigiqa": "pku_aigiqa4k"}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(name): name for name in DATASETS} | ALIASES


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name`, or an error listing the known names."""
    canonical = _BY_KEY.get(_key(name))
    if canonical is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return DATASETS[canonical]


def load_dataset(name: str, root: str, storage: Storage = None, **options: Any) -> list[IQARow]:
    """Rows of dataset `name` whose official files lie under `root` (a local folder or s3:// prefix).

    `options` go to the loader: `image_dir=` for table datasets and PIPAL, `label=` for `synthetic`.
    """
    info = dataset_info(name)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise DatasetError(f"dataset {info.name!r} takes no option(s) {unknown}; it takes {list(info.options)}")
    return info.loader(root, storage, **options)
