"""The trainers' shared skeleton: where a run keeps its checkpoints, and the run state a resume reads back."""
from __future__ import annotations

import os

import torch

from rayiqa.config import StorageConfig
from rayiqa.io.fs import RetryingS3FileSystem
from rayiqa.train.skeleton import TRAIN_STATE_FILE, load_train_state, run_config, save_train_state


def test_run_config_local_and_s3_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = run_config("a", "runs", max_failures=3, keep_checkpoints=4)
    assert (local.name, local.storage_path) == ("a", os.path.join(str(tmp_path), "runs"))
    assert local.failure_config.max_failures == 3 and local.checkpoint_config.num_to_keep == 4

    storage = StorageConfig(endpoint_url="http://127.0.0.1:9", key="k", secret="s", retry_attempts=7)
    s3 = run_config("b", "s3://bucket/runs", max_failures=-1, storage=storage)
    assert s3.storage_path == "bucket/runs" and s3.checkpoint_config.num_to_keep == 2
    assert isinstance(s3.storage_filesystem, RetryingS3FileSystem)  # the storage's retry setting survives pickling
    assert s3.storage_filesystem.__reduce__()[1][0] == 7


def test_train_state_round_trip_restores_optimiser_and_scheduler(tmp_path):
    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)

    model, optimizer, scheduler = fresh()
    for _ in range(2):
        model(torch.ones(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    save_train_state(tmp_path, optimizer, scheduler, epoch=2, step=6, history=[{"epoch": 1}, {"epoch": 2}])
    assert (tmp_path / TRAIN_STATE_FILE).is_file()

    _, optimizer2, scheduler2 = fresh()
    progress = load_train_state(tmp_path, optimizer2, scheduler2)
    assert progress == {"epoch": 2, "step": 6, "history": [{"epoch": 1}, {"epoch": 2}]}
    assert scheduler2.get_last_lr() == scheduler.get_last_lr() and scheduler2.last_epoch == 2
    moments = [s["exp_avg"] for s in optimizer.state_dict()["state"].values()]
    restored = [s["exp_avg"] for s in optimizer2.state_dict()["state"].values()]
    assert len(restored) == 2 and all(torch.equal(a, b) for a, b in zip(moments, restored, strict=True))
    assert set(load_train_state(tmp_path)) == {"epoch", "step", "history", "optimizer", "scheduler"}  # nothing to load into
