"""Fault-test helpers: this session's actors from Ray's GCS table (train workers, Serve replicas), and
a thread that SIGKILLs a Ray Train worker once the run's controller has registered a checkpoint."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

TRAIN_WORKER_CLASS = "RayTrainWorker"  # Ray Train V2's worker actor class (ray 2.60)
# written by Ray Train's controller each time it registers a reported checkpoint (ray.train.v2 internals)
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def actors(class_prefix: str, *, alive: bool) -> list[dict]:
    """This session's actors whose class name starts with `class_prefix` (live ones, or all ever created).

    Read from the GCS table (`ray._private.state.actors`, Ray's debugging view): `ray.util.state` needs
    the dashboard, which the session's Ray runs without.
    """
    from ray._private.state import actors as actor_table

    table = actor_table(actor_state_name="ALIVE" if alive else None).values()
    return [a for a in table if a["ActorClassName"].startswith(class_prefix)]


class KillAfterCheckpoint(threading.Thread):
    """Waits until the run's controller has registered a checkpoint, then SIGKILLs one train worker.

    Use as `with KillAfterCheckpoint(storage_path / name) as killer: trainer.fit()`.
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.run_dir = run_dir
        self.stop = threading.Event()  # set when the run has ended
        self.killed_pid: int | None = None
        self.checkpointed: dict | None = None  # metrics of the latest registered checkpoint at the kill

    def run(self) -> None:
        snapshot = self.run_dir / SNAPSHOT_FILE
        while not self.stop.wait(0.05):
            try:
                state = json.loads(snapshot.read_text())
            except (FileNotFoundError, json.JSONDecodeError):  # no checkpoint yet, or caught mid-write
                continue
            workers = actors(TRAIN_WORKER_CLASS, alive=True)
            if workers:
                self.checkpointed = state["latest_checkpoint_result"]["metrics"]
                self.killed_pid = workers[-1]["Pid"]
                os.kill(self.killed_pid, signal.SIGKILL)
                return

    def __enter__(self) -> KillAfterCheckpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=10)  # the loop checks `stop` every 0.05 s
