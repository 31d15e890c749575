"""What every rayiqa Ray Train job shares: its run config, its TorchTrainer, its checkpoints and resume.

A trainer is, on the driver: `ensure_ray`, its data (a synthetic set is built where the workers can read
it: `rayiqa.train.synthetic_sets.ensure_synthetic_set`), then `fit(loop, config, run_config(...), ...)`.
In the worker loop, as Ray Train's docs do it:

    with resume_folder() as folder:            # the run's latest checkpoint, None on a fresh start
        if folder is not None:
            model = <the model's own loader>(folder)
            progress = load_train_state(folder, optimizer, scheduler)
    ...
    report(metrics, save)                      # every worker; rank 0 also checkpoints with save(folder)

A checkpoint folder holds the model's own files (written and read beside the model) and
`TRAIN_STATE_FILE` (optimiser, scheduler and the run's progress). A rerun with the same storage_path +
name, or Ray Train's restart of the worker group after a failure, starts from the latest checkpoint.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train.torch import TorchTrainer

from rayiqa.config import StorageConfig
from rayiqa.io.fs import resolve_fs, split_uri

TRAIN_STATE_FILE = "train_state.pt"  # optimiser + scheduler states and the progress (epoch, step, history...)


def run_config(name: str, storage_path: str, max_failures: int, keep_checkpoints: int = 2,
               storage: StorageConfig | None = None) -> ray.train.RunConfig:
    """Checkpoints under `storage_path/name` (a local folder, or s3:// through rayiqa.io.fs with the storage's
    endpoint and retry setting), the latest `keep_checkpoints` kept, `max_failures` worker-group restarts."""
    scheme, path = split_uri(storage_path)
    where: dict[str, Any] = {"storage_path": path}
    if scheme == "s3":
        where["storage_filesystem"] = resolve_fs(storage_path, storage or StorageConfig())[0]
    return ray.train.RunConfig(
        name=name,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
        **where,
    )


def fit(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], run: ray.train.RunConfig, *,
        num_workers: int, cpus_per_worker: float, use_gpu: bool = False,
        datasets: dict[str, Any] | None = None) -> ray.train.Result:
    """Run `loop(loop_config)` on `num_workers` TorchTrainer workers (gloo on CPU, NCCL on GPU); each
    Ray Dataset in `datasets` is split across them (`ray.train.get_dataset_shard(name)`)."""
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=run,
        datasets=datasets,
    )
    return trainer.fit()


@contextmanager
def resume_folder() -> Iterator[Path | None]:
    """The folder of the checkpoint Ray Train hands this worker (the run's latest), None on a fresh start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def save_train_state(folder: Path, optimizer: Any = None, scheduler: Any = None, **progress: Any) -> None:
    """Write `TRAIN_STATE_FILE`: the optimiser's and scheduler's states (when given) and the progress entries."""
    state = dict(progress)
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    torch.save(state, Path(folder) / TRAIN_STATE_FILE)


def load_train_state(folder: Path, optimizer: Any = None, scheduler: Any = None) -> dict[str, Any]:
    """Read `TRAIN_STATE_FILE` into the given optimiser and scheduler; the other entries (progress) are returned."""
    state = torch.load(Path(folder) / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(state.pop("optimizer"))
    if scheduler is not None:
        scheduler.load_state_dict(state.pop("scheduler"))
    return state


def report(metrics: dict[str, Any], save: Callable[[Path], None] | None = None) -> None:
    """`ray.train.report` from every worker; rank 0 also writes a checkpoint with `save(folder)` and attaches it."""
    if save is None or ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
