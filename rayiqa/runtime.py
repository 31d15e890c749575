"""Ray start-up and Ray Data's retry settings, shared by the jobs, the trainers and Serve.

The bottom layer of the Ray side: it imports only the config and `rayiqa.io.errors` at module level,
and Ray itself inside each function, so importing it costs nothing where Ray is not used.
"""
from __future__ import annotations

import math
import os

from rayiqa.config import RayConfig
from rayiqa.io.errors import StoreUnavailable


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
