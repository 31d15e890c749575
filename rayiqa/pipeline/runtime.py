"""Ray start-up and run provenance shared by the jobs."""
from __future__ import annotations

import logging
import math
import os

from rayiqa.config import RayConfig, ScoreConfig
from rayiqa.io.errors import StorageError, StoreUnavailable

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


# Ray Data retries a file operation whose error matches `DataContext.retried_io_errors` 10 times (up to
# 32 s apart) on top of the AWS SDK's own attempts; for an unreachable store that multiplies the budget
# (~10 min before a dead store ends the run). These are Ray's defaults as regexes, less
# "AWS Error NETWORK_CONNECTION": connection errors are left to the SDK's `storage.retry_attempts`.
RAY_RETRIED_IO_ERRORS = (
    r"AWS Error INTERNAL_FAILURE",
    r"AWS Error SLOW_DOWN",
    r"AWS Error UNKNOWN \(HTTP status 503\)",
    r"AWS Error SERVICE_UNAVAILABLE",
)


# A decode task whose read raised StoreUnavailable (the input store down past the SDK's own retries) is
# run again by Ray this many times before the run stops; Ray Data's default (-1: forever) would hang a
# run on a dead store.
READ_TASK_RETRIES = 3


def read_retry_args() -> dict:
    """`map_batches` keywords for the stage that reads the inputs: Ray retries the task on StoreUnavailable."""
    return {"max_retries": READ_TASK_RETRIES, "retry_exceptions": [StoreUnavailable]}


def configure_io_retries() -> None:
    """One retry budget for an unreachable store (the SDK's, per request); Ray Data keeps retrying
    throttling and 5xx answers on top of the SDK. A failed task raises its own exception (not Ray
    Data's UserCodeException, which loses it), so a run that died on a store names that store."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.retried_io_errors = list(RAY_RETRIED_IO_ERRORS)
    ctx.raise_original_map_exception = True


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


def join_path(root: str, name: str) -> str:
    """Join a filesystem path (local or bucket/key form) with a child name."""
    return f"{root.rstrip('/')}/{name}"


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
    random = [p["model_id"] for p in [*mllms, out.get("segmenter", {"weights": ""})] if p.get("weights") == "random-init"]
    if random:
        log.warning(
            "models with RANDOM weights (tiny presets): %s — scores are not image quality, only a "
            "check that the pipeline runs", ", ".join(map(str, random)),
        )
    return out
