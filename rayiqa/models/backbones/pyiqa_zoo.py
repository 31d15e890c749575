"""MUSIQ, TReS and MetaIQA from pyiqa's model zoo as `IQABackbone`s (optional extra `rayiqa[pyiqa]`).

pyiqa is licensed PolyForm Noncommercial 1.0.0 since 2026 (earlier releases: Apache-2.0): installing
the extra means accepting that licence, so it is imported lazily and never required. Weights are
fetched by pyiqa at run time. Names: `musiq` (KonIQ-10k), `tres` (KonIQ-10k), `tres-flive`,
`musiq-paq2piq`, `metaiqa` (TID2013 + KADID-10k; recent pyiqa only). LLM-TTA's Table 3 used TReS
and MUSIQ trained on LIVE-FB, which is the PaQ-2-PiQ database: pick `tres-flive` and
`musiq-paq2piq` to match the paper, `tres` / `musiq` for the KonIQ-trained weights.

Features are the input of the net's final regressor, caught with a forward hook while pyiqa's own
forward runs (so its resizing, cropping and patching stay pyiqa's), averaged over the crops the
net evaluates; the score is that regressor applied to the averaged features.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from rayiqa.models.backbones.base import WrappedBackbone, wrap_module

PYIQA_LICENCE_NOTE = (
    "pyiqa is not installed. It is an optional extra: `pip install 'rayiqa[pyiqa]'`. Note that pyiqa "
    "is licensed PolyForm Noncommercial 1.0.0 (non-commercial use only) since 2026."
)


# Attribute name of each net's final regressor. TReS's and (single-output) MUSIQ's are Linear, so
# they commute with the crop mean and the wrapped scores equal pyiqa's own.
PYIQA_REGRESSORS: dict[str, str] = {
    "musiq": "head", "musiq-paq2piq": "head", "tres": "fc", "tres-flive": "fc", "metaiqa": "head",
}


class HookedFeatures:
    """feature_fn for `wrap_module`: run the whole net, return the first input its regressor saw.

    TReS runs its regressor twice (image and flipped image); the first call is the image's. The
    caught rows (B * n_crops, D) are averaged per image.
    """

    def __init__(self, regressor_name: str) -> None:
        self.regressor_name = regressor_name

    def __call__(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        caught: list[torch.Tensor] = []

        def catch(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if not caught:
                caught.append(args[0])

        handle = getattr(net, self.regressor_name).register_forward_pre_hook(catch)
        try:
            net(x)
        finally:
            handle.remove()
        if not caught:
            raise RuntimeError(f"{type(net).__name__}.{self.regressor_name} was not called by the net's forward")
        rows = caught[0].flatten(1)
        return rows.reshape(x.shape[0], -1, rows.shape[1]).mean(dim=1)


def load_pyiqa_backbone(name: str, device: str | torch.device = "cpu") -> WrappedBackbone:
    """`pyiqa.create_metric(name).net` wrapped for TTA; raises ImportError naming the extra and licence."""
    if name not in PYIQA_REGRESSORS:
        raise ValueError(f"unknown pyiqa backbone {name!r}; choose one of {sorted(PYIQA_REGRESSORS)}")
    try:
        pyiqa = importlib.import_module("pyiqa")
    except ImportError as e:
        raise ImportError(PYIQA_LICENCE_NOTE) from e
    net = pyiqa.create_metric(name, as_loss=False, device=torch.device(device)).net
    regressor = PYIQA_REGRESSORS[name]
    return wrap_module(net, HookedFeatures(regressor), getattr(net, regressor), weights="pretrained")
