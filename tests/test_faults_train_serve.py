"""Fault tolerance of the trainers and the endpoint on a real local Ray: a Ray Train worker SIGKILLed
mid-run resumes from the last checkpoint; a Serve replica SIGKILLed under load is replaced while every
request in flight ends in a 200 or a 5xx, none in a hang."""
from __future__ import annotations

import base64
import io
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from faults import TRAIN_WORKER_CLASS, KillAfterCheckpoint, actors
from rayiqa.config import load_config
from rayiqa.config.promptiqa import PromptIQATrainConfig

EPOCHS = 3
STEPS_PER_EPOCH = 3  # 6 episodes (see the overrides below) over 2 workers


def test_train_worker_killed_mid_run_resumes_from_last_checkpoint(ray_local, pristine, tmp_path):
    from rayiqa.train.promptiqa import train_promptiqa

    syn = tmp_path / "syn"
    cfg = load_config(PromptIQATrainConfig, None, [
        f"datasets=[{{root: {syn}, label: ssim}}, {{root: {syn}, label: psnr_inv}}]",
        f"synthetic.pristine={pristine}", "synthetic.types=[gaussian_blur, jpeg]", "synthetic.levels=3",
        # 4 refs -> 3 train refs x 2 types x 3 levels = 18 images per dataset -> 3 episodes of 6; 2 datasets
        # -> 6 episodes, 3 per worker: an epoch is 3 optimiser steps, the run EPOCHS x 3
        "batch_size=6", "ispp_size=4", f"epochs={EPOCHS}", "optim.lr=1e-3", "max_failures=1",
        "loader_tasks=1",  # six tiny episodes: one loader process, not six starting at once on 2 cores
        f"storage_path={tmp_path / 'runs'}", "name=faults",
        "model.image_size=32", "model.dim=16", "model.prompt_depth=1", "model.ispp_depth=1", "model.fusion_depth=2",
    ])
    workers_before = len(actors(TRAIN_WORKER_CLASS, alive=False))
    with KillAfterCheckpoint(tmp_path / "runs" / "faults") as killer:
        result = train_promptiqa(cfg)

    assert killer.killed_pid is not None, "no checkpoint was registered while workers were alive"
    assert result.error is None
    # the same end state as an uninterrupted run: every epoch and every step done exactly once
    assert (result.metrics["epoch"], result.metrics["step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "train_state.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    # the last attempt restarted from a checkpoint, not from step 0, and lost nothing checkpointed before the kill
    resumed = result.metrics["resumed_from_step"]
    assert killer.checkpointed["step"] >= STEPS_PER_EPOCH
    assert killer.checkpointed["step"] <= resumed < EPOCHS * STEPS_PER_EPOCH and resumed % STEPS_PER_EPOCH == 0
    # a second worker group replaced the first: 2 workers started, then 2 more after the failure
    assert len(actors(TRAIN_WORKER_CLASS, alive=False)) - workers_before == 4
    assert not any(a["Pid"] == killer.killed_pid for a in actors(TRAIN_WORKER_CLASS, alive=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_b64(seed: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    return int(serve.status().applications[app].deployments[deployment].replica_states.get("RUNNING", 0))


REQUESTS, CONCURRENCY, KILL_AFTER = 36, 8, 12  # the kill comes once KILL_AFTER requests have answered
BATCH_WAIT_S = 0.5  # @serve.batch window of the llm-iqa replicas


def test_serve_replica_killed_under_load_is_replaced(ray_local):
    from ray import serve

    from rayiqa.config.serve import ServeConfig
    from rayiqa.serve.app import build_app

    port, app = free_port(), "rayiqa-faults"
    cfg = load_config(ServeConfig, None, [
        f"app_name={app}", "http.host=127.0.0.1", f"http.port={port}", "ingress.num_cpus=0.1",
        # each replica holds its requests for a batch window, so the kill finds requests in flight on it;
        # a health check each second: Serve notices the dead replica within 1 s (Ray's default: 10 s)
        "models={llm-iqa: {kind: llm-iqa, method: {segmentation: false}, deployment: {min_replicas: 2, "
        "max_replicas: 2, max_ongoing_requests: 4, num_cpus: 0.25, max_batch_size: 8, health_check_period_s: 1, "
        f"batch_wait_timeout_s: {BATCH_WAIT_S}}}}}}}",
    ])
    replica_class = f"ServeReplica:{app}:model-llm-iqa"
    serve.shutdown()  # HTTP options are fixed when Serve starts: drop any Serve an earlier test left up
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg), name=app, route_prefix="/")
        before = {a["Name"]: a["Pid"] for a in actors(replica_class, alive=True)}
        assert len(before) == 2
        victim = sorted(before)[0]

        answered = threading.Semaphore(0)

        def one(client: httpx.Client, i: int) -> tuple[float, float, int | str, str]:
            """(sent, answered, status or 'timeout', Retry-After + body of a 503) of one score request;
            no assertion here: a failing one in a pool thread would leave the waits below to time out."""
            sent, detail = time.monotonic(), ""
            try:
                r = client.post("/v1/score", json={"model": "llm-iqa", "images": [{"base64": png_b64(i)}]})
                code: int | str = r.status_code
                if code == 503:
                    detail = f"{r.headers.get('retry-after')} {r.text}"
            except httpx.TimeoutException:
                code = "timeout"
            finally:
                answered.release()
            return sent, time.monotonic(), code, detail

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client, \
                ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = [pool.submit(one, client, i) for i in range(REQUESTS)]
            for _ in range(KILL_AFTER):  # each request has the client's 60 s timeout
                assert answered.acquire(timeout=120), "requests stopped being answered before the kill"
            # answers come in batches: kill mid-window, not just as the victim may have emptied its batch
            time.sleep(BATCH_WAIT_S / 2)
            killed_at = time.monotonic()
            os.kill(before[victim], signal.SIGKILL)
            outcomes = [f.result(timeout=300) for f in futures]

        codes = [code for _, _, code, _ in outcomes]
        # a request in flight on the killed replica fails fast with Retry-After 1
        assert all(detail.startswith("1 ") and "died" in detail for *_, code, detail in outcomes if code == 503), outcomes
        assert "timeout" not in codes, codes  # no request hung
        assert set(codes) <= {200, 503}, codes  # no 4xx: the kill is not the client's fault
        assert 503 in codes, codes  # requests in flight on the killed replica failed fast, with Retry-After
        assert all(code == 200 for _, done, code, _ in outcomes if done < killed_at)
        assert any(code == 200 for sent, _, code, _ in outcomes if sent > killed_at), codes  # still serving after it

        def replaced() -> bool:
            alive = {a["Name"] for a in actors(replica_class, alive=True)}
            return len(alive) == 2 and victim not in alive and running_replicas(app, "model-llm-iqa") == 2

        deadline = time.monotonic() + 120  # the replacement replica loads its model first
        while not replaced() and time.monotonic() < deadline:
            time.sleep(0.5)
        after = {a["Name"] for a in actors(replica_class, alive=True)}
        assert len(after) == 2 and victim not in after and len(after - set(before)) == 1, (before, after)
        assert running_replicas(app, "model-llm-iqa") == 2
        good = httpx.post(f"http://127.0.0.1:{port}/v1/score", timeout=60,
                          json={"model": "llm-iqa", "images": [{"base64": png_b64(0)}]})
        assert good.status_code == 200, good.text
    finally:
        serve.shutdown()
