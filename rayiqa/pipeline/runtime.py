"""What a score run reports about itself: the storage error it died on, and its models' provenance."""
from __future__ import annotations

import logging

from rayiqa.config import ScoreConfig
from rayiqa.io.errors import StorageError, StoreUnavailable
from rayiqa.runtime import READ_TASK_RETRIES

log = logging.getLogger(__name__)


def io_cause(exc: BaseException) -> OSError | None:
    """The I/O error behind a failed run, if any: the first OSError down the exception's chain
    (a Ray task error carries the worker's exception as `.cause`)."""
    from ray.exceptions import RayTaskError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RayTaskError):  # checked first: Ray's error class also subclasses the cause's
            exc = exc.cause
        elif isinstance(exc, OSError):
            return exc
        else:
            exc = exc.__cause__ or exc.__context__
    return None


def storage_error(exc: BaseException, cfg: ScoreConfig) -> StorageError | None:
    """A short StorageError for a run that died on I/O (None if `exc` is not an I/O error): the input
    store (a decode task's StoreUnavailable, after the SDK's and Ray Data's retries) or the output one."""
    cause = io_cause(exc)
    if cause is None:
        return None
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if isinstance(cause, StoreUnavailable):
        where = (f"input store (input.uri={cfg.input.uri!r}, input.storage.retry_attempts="
                 f"{cfg.input.storage.retry_attempts} per request, {READ_TASK_RETRIES} task retries)")
    else:
        where = f"output store (output.storage.retry_attempts={cfg.output.storage.retry_attempts} per request)"
    return StorageError(
        f"storage I/O failed after the retry budget of the {where}: {type(cause).__name__}: {first_line}\n"
        f"Output {cfg.output.uri}: the Parquet parts already written are complete; "
        "run the same command again to resume once the store is reachable."
    )


def model_provenance(cfg: ScoreConfig) -> dict:
    """Model ids and weight sources of a score run. Resolving the tiny presets here builds their
    checkpoints once on the driver, before any actor asks for them."""
    from rayiqa.models.mllm.presets import resolve_model

    mllms = []
    for m in cfg.mllms:
        source, weights = resolve_model(m.preset)
        mllms.append({"model_id": m.preset, "source": str(source), "weights": weights, "engine": m.engine})
    out = {"mllms": mllms}
    if cfg.method.segmentation:
        from rayiqa.models.sam2_spec import resolve_spec  # names the model without importing torch or sam2

        spec = resolve_spec(cfg.segmenter)
        out["segmenter"] = {
            "model_id": spec.model_id,
            "source": spec.checkpoint,
            "weights": "pretrained" if spec.checkpoint else "random-init",
            "image_size": spec.image_size,
        }
    warn_weights(mllms, out.get("segmenter"))
    return out


def warn_weights(mllms: list[dict], segmenter: dict | None) -> None:
    """Say what a run's scores can mean when its models are not released checkpoints."""
    from rayiqa.models.mllm.presets import RANDOM_INIT, RAYIQA_TRAINED

    random = [m["model_id"] for m in mllms if m["weights"] == RANDOM_INIT]
    if random:
        log.warning("MLLMs with RANDOM weights (tiny presets): %s — scores are not image quality, only a "
                    "check that the pipeline runs", ", ".join(map(str, random)))
    trained = [m["model_id"] for m in mllms if m["weights"] == RAYIQA_TRAINED]
    if trained:
        log.warning("MLLM %s: a ~1 M-parameter Qwen2.5-VL trained by rayiqa on synthetic distortions (blur, noise, "
                    "JPEG, contrast, ...) of packaged photographs — it ranks those distortions, not aesthetics or "
                    "AI-generation artefacts; name a released model in `mllms` for real scores", ", ".join(trained))
    if segmenter and segmenter["weights"] == RANDOM_INIT:
        log.warning("SAM2 %s has RANDOM weights: its crops are arbitrary regions, not objects", segmenter["model_id"])
