"""Ray start-up and run provenance shared by the jobs."""
from __future__ import annotations

import logging
import math
import os

from rayiqa.config import RayConfig, ScoreConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig, min_cpus: float = 0) -> None:
    """Join the cluster at `cfg.address` / RAY_ADDRESS, else start a local Ray in-process.

    A local Ray gets at least `min_cpus` logical CPUs (the job's actor pools plus room for its read
    tasks), so a small machine oversubscribes its cores instead of deadlocking on CPU accounting.
    """
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, math.ceil(min_cpus))
        ray.init(num_cpus=num_cpus, include_dashboard=False)


def join_path(root: str, name: str) -> str:
    """Join a filesystem path (local or bucket/key form) with a child name."""
    return f"{root.rstrip('/')}/{name}"


def model_provenance(cfg: ScoreConfig) -> dict:
    """Model ids and weight sources of a score run. Resolving the tiny presets here builds their
    checkpoints once on the driver, before any actor asks for them."""
    from rayiqa.models.mllm.presets import resolve_model
    from rayiqa.models.segmenter import resolve_spec

    mllms = []
    for m in cfg.mllms:
        source, weights = resolve_model(m.preset)
        mllms.append({"model_id": m.preset, "source": str(source), "weights": weights, "engine": m.engine})
    out = {"mllms": mllms}
    if cfg.method.segmentation:
        spec = resolve_spec(cfg.segmenter)
        out["segmenter"] = {
            "model_id": spec.model_id,
            "source": spec.checkpoint,
            "weights": "pretrained" if spec.checkpoint else "random-init",
            "image_size": spec.image_size,
        }
    random = [p["model_id"] for p in [*mllms, out.get("segmenter", {"weights": ""})] if p.get("weights") == "random-init"]
    if random:
        log.warning(
            "models with RANDOM weights (tiny presets): %s — scores are not image quality, only a "
            "check that the pipeline runs", ", ".join(map(str, random)),
        )
    return out
