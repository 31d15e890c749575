"""The cluster path end to end: a real `ray start --head` cluster on 127.0.0.1, the scoring job submitted
with `ray job submit` and a runtime-env working dir, its Parquet output checked, the cluster stopped.

The cluster is this test's own (its own temp dir, ports and process group), so it never touches the
session's in-process Ray or anyone else's cluster; it is stopped by signalling its process group.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from rayiqa.config import InputConfig
from rayiqa.io.sources import list_inputs

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
EXCLUDES = [".venv", ".venv-*", ".git", "out", "**/__pycache__", ".pytest_cache", "tests/vllm_cpu"]
N_IMAGES = 3
JOB_ID = "rayiqa-score-test"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, which only wait for init to reap them, do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the cluster's process group, then SIGKILL whatever is left after the grace period."""
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if group_alive(pgid):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.5)
    proc.wait(timeout=30)


def wait_until_started(log: Path, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    """Until `ray start --block` reports the runtime up (its dashboard answers before the node is ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited early:\n{log.read_text()[-3000:]}"
        if "Ray runtime started" in log.read_text():
            return
        time.sleep(1)
    raise TimeoutError(f"ray start did not finish in {timeout_s}s:\n{log.read_text()[-3000:]}")


def test_score_job_runs_through_ray_job_submit(tmp_path):
    gcs, dashboard, client, agent_listen, agent_grpc, metrics = free_ports(6)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_USAGE_STATS_ENABLED="0")
    out = tmp_path / "scores"
    head_log = tmp_path / "ray-start.log"
    config = tmp_path / "score-tiny.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"uri": "builtin:samples", "limit": N_IMAGES},
        "output": {"uri": str(out), "mode": "overwrite"},
        "method": {"segmentation": False},
        "decode": {"batch_size": 4, "num_cpus": 0.25},
        "score": {"batch_size": 4, "num_cpus": 0.5},
    }))
    with head_log.open("w") as log_file:  # Popen keeps its own copy of the descriptor
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--num-gpus=0",
             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_listen}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
             f"--temp-dir={temp_dir}", "--include-dashboard=true", "--disable-usage-stats"],
            env=env, cwd=tmp_path, start_new_session=True, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_started(head_log, head)
        runtime_env = {"excludes": EXCLUDES, "env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
        submit = subprocess.run(
            [RAY, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", f"--submission-id={JOB_ID}",
             f"--working-dir={REPO}", "--runtime-env-json", json.dumps(runtime_env), "--",
             sys.executable, "jobs/score.py", "--config", str(config)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420,
        )
        status = subprocess.run(
            [RAY, "job", "status", f"--address=http://127.0.0.1:{dashboard}", JOB_ID],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert submit.returncode == 0 and f"Job '{JOB_ID}' succeeded" in status.stdout + status.stderr, (
            f"{status.stdout}{status.stderr[-1500:]}\n--- submit ---\n{submit.stdout[-4000:]}{submit.stderr[-1500:]}"
            f"\n--- ray start ---\n{head_log.read_text()[-3000:]}"
        )
        assert "rayiqa score — summary" in submit.stdout  # the job's logs streamed back to the submitter

        table = pq.read_table(out)
        expected = list_inputs(InputConfig(uri="builtin:samples", limit=N_IMAGES))
        paths = table.column("path").to_pylist()
        assert sorted(Path(p).name for p in paths) == [Path(p).name for p in expected]
        assert not any(p.startswith(str(REPO)) for p in paths)  # the job ran from its uploaded working dir
        assert table.column("error_kind").null_count == N_IMAGES  # no error rows
        scores = table.column("score").to_pylist()
        assert all(1.0 <= s <= 7.0 for s in scores), scores  # expected level of a 7-level word standard
        assert all(ids == ["tiny"] for ids in table.column("model_ids").to_pylist())
        manifest = json.loads((out / "_manifest.json").read_text())
        assert json.dumps(manifest).count("random-init") >= 1
    finally:
        stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not group_alive(head.pid)
