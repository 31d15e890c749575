"""Fault-test helpers: this session's actors from Ray's GCS table (train workers, Serve replicas), a
thread that SIGKILLs a Ray Train worker once the run's controller has registered a checkpoint, and for
the scoring job: its committed rows, bounded waits, a fault run beside it and its actors' processes.
No test-only servers are imported here, so any test environment can use it."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

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


# ---- the scoring job: waiting for its state, a fault beside it, its actors' processes ------------

WAIT_S = 600  # upper bound on any wait for the run to reach a state (a loaded shared machine is slow)


def committed_rows(fs: pafs.FileSystem, out_path: str) -> int:
    """Inputs in committed parts: Ray Data renames a part's `<id>.pending.parquet` checkpoint to
    `<id>.parquet` once the part is written (a committed checkpoint file is complete, so readable)."""
    infos = fs.get_file_info(pafs.FileSelector(f"{out_path}/_checkpoint", allow_not_found=True))
    done = [i.path for i in infos if i.path.endswith(".parquet") and not i.path.endswith(".pending.parquet")]
    return sum(pq.read_metadata(p, filesystem=fs).num_rows for p in done)


def wait_for(predicate, what: str, until_s: float = WAIT_S):
    deadline = time.monotonic() + until_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"waited {until_s}s for {what}")


@contextmanager
def beside_the_job(fault):
    """Runs `fault(job_done)` in a thread while the block runs the job, then sets `job_done`; yields the
    dict that `fault`'s result is merged into once the block ends (its exception is re-raised here)."""
    job_done, out, errors = threading.Event(), {}, []

    def run() -> None:
        try:
            out.update(fault(job_done))
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result: dict = {}
    try:
        yield result
    finally:
        job_done.set()
    thread.join(timeout=WAIT_S)
    if errors:
        raise errors[0]
    result.update(out)


def _ancestors(pid: int, depth: int = 4) -> list[int]:
    out = []
    for _ in range(depth):
        try:
            pid = int((Path(f"/proc/{pid}/stat")).read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
        out.append(pid)
    return out


def stage_pids(stage: str) -> list[int]:
    """Live actor processes of pool `stage` in the Ray that this test process started (driver -> raylet
    -> worker), by the title Ray gives an actor pool's worker: `ray::MapWorker(...MapBatches(<stage>)...)`.
    (`ray.util.state.list_actors` needs the dashboard, which the session's local Ray runs without.)"""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::MapWorker(") and f"MapBatches({stage})" in title and os.getpid() in _ancestors(int(proc.name)):
            pids.append(int(proc.name))
    return pids
