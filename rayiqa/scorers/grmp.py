"""`grmp`: a fine-tuned GRMP-IQA (prompted CLIP) scores p(high | x) of Eq. 2 per image."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import numpy as np

from rayiqa.config import InputConfig
from rayiqa.config.scorers import ScorerConfig
from rayiqa.scorers.base import Scorer, ScoreResult, register_scorer, rgb_error


class GRMPScorerConfig(ScorerConfig):
    """A `rayiqa train grmp-finetune` checkpoint; the score is p(high | x) of Eq. 2."""

    name: ClassVar[str] = "grmp"
    checkpoint: str  # the checkpoint folder (local or s3://)
    device: str = "cpu"

    @property
    def model_id(self) -> str:
        return f"grmp:{self.checkpoint}"


@contextmanager
def local_folder(uri: str, input_cfg: InputConfig) -> Iterator[str]:
    """A checkpoint folder on local disk: the folder itself, or a temporary copy of an object-storage one."""
    from pyarrow import fs as pafs

    from rayiqa.io.fs import resolve_fs

    fs, path = resolve_fs(uri, input_cfg.storage)
    if isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp


class GRMPScorer(Scorer):
    """Each result: score = p(high | x) in [0, 1]; evidence = both scaled cosine logits and the weights tag;
    a malformed array gets `evidence.error` and no score."""

    def __init__(self, config: GRMPScorerConfig, input_cfg: InputConfig) -> None:
        from rayiqa.models.grmp_checkpoint import load_model

        super().__init__(config, input_cfg)
        with local_folder(config.checkpoint, input_cfg) as directory:
            model, _ = load_model(directory)
        self.model = model.to(config.device).eval()
        self.transform = model.image_transform(is_train=False)

    def score_arrays(self, images: list[np.ndarray]) -> list[ScoreResult]:
        import torch
        from PIL import Image

        from rayiqa.methods.grmp_iqa import p_high

        errors = [rgb_error(image) for image in images]
        good = [i for i, error in enumerate(errors) if error is None]
        results = [ScoreResult(None, {"error": error}) for error in errors]
        if good:
            with torch.no_grad():
                batch = torch.stack([self.transform(Image.fromarray(images[i])) for i in good]).to(self.config.device)
                logits = self.model(batch)
            for i, row, p in zip(good, logits.tolist(), p_high(logits).tolist()):
                results[i] = ScoreResult(p, {"logit_high": row[0], "logit_low": row[1], "weights": self.model.weights})
        return results


@register_scorer(GRMPScorerConfig)
def create_grmp(config: GRMPScorerConfig, input_cfg: InputConfig) -> GRMPScorer:
    return GRMPScorer(config, input_cfg)
