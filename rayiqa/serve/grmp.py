"""GRMP-IQA served: the `grmp` scorer (a fine-tuned prompted CLIP, p(high | x) of Eq. 2) behind Ray
Serve, images batched across requests. A bad image (not H x W x 3 uint8) gives a result with
`evidence.error` and no score; the other images of the request are scored."""
from __future__ import annotations

from ray import serve

from rayiqa.config.serve import DeploymentConfig
from rayiqa.scorers import create_scorer
from rayiqa.serve.base import ScorerDeployment


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class GRMPDeployment(ScorerDeployment):
    """One GRMP-IQA model behind `score(images, options)`; `options` are unused (no per-request knobs)."""

    def __init__(self, checkpoint: str, deployment: DeploymentConfig | None = None) -> None:
        super().__init__(create_scorer("grmp", checkpoint=checkpoint), deployment or DeploymentConfig(max_batch_size=16))
