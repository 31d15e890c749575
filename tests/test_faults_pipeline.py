"""Fault tolerance of the scoring job on a real local Ray: a scorer or adapter actor killed mid-run, the
driver killed mid-run and the command run again, a model that raises on one image, an output store
(moto) that goes away for a few seconds or for good, the same for the input store, and a re-run that
re-scores a finished output's error rows. Every run must end with each input exactly once in the output.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import botocore.session
import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from moto.server import ThreadedMotoServer
from PIL import Image

from rayiqa.config import InputConfig, ScoreConfig, StorageConfig, load_config
from rayiqa.io.fs import resolve_fs
from rayiqa.io.samples import samples_dir
from rayiqa.io.sources import list_inputs
from rayiqa.pipeline.runtime import StorageError
from rayiqa.pipeline.score_job import run_score
from rayiqa.pipeline.stages import OUTPUT_SCHEMA

from faults import beside_the_job, committed_rows, stage_pids, wait_for

RAYIQA = str(Path(sys.executable).with_name("rayiqa"))
# Whole-image scoring with the tiny random-weight Qwen2.5-VL; batches of 2 so a run has many parts.
FAST = [
    "method.segmentation=false",
    "mllms=[{preset: tiny, max_pixels: 12544}]",
    "decode.batch_size=2",
    "decode.num_cpus=1",
    "score.batch_size=2",
]
KEY, SECRET, BUCKET = "testing", "testing", "scores"


def _cfg(out_uri: str, *extra: str) -> ScoreConfig:
    return load_config(ScoreConfig, None, ["input.uri=builtin:samples", f"output.uri={out_uri}", *FAST, *extra])


def _assert_each_input_once(rows: list[dict], inputs: list[str]) -> None:
    counts = Counter(r["path"] for r in rows)
    assert set(counts) == set(inputs) and set(counts.values()) == {1}, counts
    assert all(r["error_kind"] is None and math.isfinite(r["score"]) for r in rows), rows


# ---- 1. a scorer or adapter actor killed mid-run ------------------------------------------------


# The adapter pool: LLM-TTA on windows of 4 rows (4 adaptation batches of B=4 over the 16 inputs).
ADAPT = ["adapt.method=llm-tta", "adapt.image_size=64", "adapt.iterations=3", "adapt.batch=4", "adapt.stage.batch_size=4"]


@pytest.mark.parametrize("stage, extra", [("ScoreStage", []), ("AdaptStage", ADAPT)], ids=["scorer", "adapter"])
def test_killed_actor_is_replaced_and_each_input_lands_once(ray_local, tmp_path, stage, extra):
    cfg = _cfg(str(tmp_path / "out"), "input.limit=16", *extra)
    inputs = list_inputs(cfg.input)
    local, out = pafs.LocalFileSystem(), str(tmp_path / "out")

    def kill_actor(job_done: threading.Event) -> dict:
        # After the first committed part the pool's actor is initialised and the run is under way.
        wait_for(lambda: committed_rows(local, out), "a first committed part")
        pid = wait_for(lambda: stage_pids(stage), f"a live {stage} process")[0]
        seen = {"pid": pid, "committed": committed_rows(local, out), "job_done": job_done.is_set()}
        os.kill(pid, signal.SIGKILL)
        seen["replacements"] = wait_for(lambda: [p for p in stage_pids(stage) if p != pid] or job_done.is_set(),
                                         f"a new {stage} actor")
        return seen

    with beside_the_job(kill_actor) as killed:
        summary = run_score(cfg)
    assert not killed["job_done"] and 0 < killed["committed"] < len(inputs)  # killed mid-run
    assert isinstance(killed["replacements"], list) and killed["pid"] not in killed["replacements"]  # a new actor
    rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    _assert_each_input_once(rows, inputs)
    assert summary.rows == summary.unique_paths == summary.scored == summary.new_rows == len(inputs)
    if stage == "AdaptStage":  # every row went through an adaptation batch of B (a row lost with the actor would lack one)
        assert all(r["tta_method"] == "llm-tta" and r["tta_note"] is None and math.isfinite(r["tta_score"]) for r in rows)
        assert set(Counter(r["tta_batch"] for r in rows).values()) == {4}


# ---- 2. the driver killed mid-run, then the same command again ----------------------------------


def test_driver_killed_mid_run_then_rerun_completes_the_rest(ray_local, tmp_path):
    """As under `ray job submit`: the driver dies, the cluster stays; the same command joins it again."""
    out = tmp_path / "out"
    config = tmp_path / "score.yaml"
    config.write_text(yaml.safe_dump({  # FAST, as a config file
        "input": {"uri": "builtin:samples", "limit": 16},
        "output": {"uri": str(out), "mode": "resume"},
        "method": {"segmentation": False},
        "mllms": [{"preset": "tiny", "max_pixels": 12544}],
        "decode": {"batch_size": 2, "num_cpus": 1},
        "score": {"batch_size": 2},
    }))
    inputs = list_inputs(InputConfig(uri="builtin:samples", limit=16))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    local = pafs.LocalFileSystem()
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen([RAYIQA, "score", str(config)], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: first.poll() is not None or committed_rows(local, str(out)), "a first committed part")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        first.kill()  # SIGKILL: no cleanup of any kind in the driver
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    committed = committed_rows(local, str(out))
    assert not (out / "_manifest.json").exists() and 0 < committed < len(inputs)  # killed mid-run
    assert wait_for(lambda: not stage_pids("ScoreStage"), "Ray to end the dead driver's job and its scorer", 60)
    parts_before = {p.name for p in out.glob("*.parquet")}

    again = subprocess.run([RAYIQA, "score", str(config)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]

    table = pq.read_table(out)
    _assert_each_input_once(table.to_pylist(), inputs)
    kept = [p for p in out.glob("*.parquet") if p.name in parts_before]  # parts of the killed run that stayed
    kept_rows = sum(pq.read_metadata(p).num_rows for p in kept)
    assert kept_rows == committed  # committed parts survive the resume; half-written ones do not
    summary = json.loads((out / "_manifest.json").read_text())["summary"]
    assert summary["rows"] == summary["unique_paths"] == summary["scored"] == summary["inputs"] == len(inputs)
    assert summary["new_rows"] == len(inputs) - kept_rows  # the rerun scored the remainder only
    assert f"scored this run    {len(inputs) - kept_rows} " in again.stdout


# ---- 3. a model that raises on one image --------------------------------------------------------


def test_model_error_on_one_image_is_that_images_error_row(ray_local, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    normal = sorted(p for p in samples_dir().iterdir() if p.suffix == ".jpg")[:3]
    for p in normal:
        shutil.copy(p, src / p.name)
    # A real, decodable 2 x 600 px image: Qwen2-VL's smart_resize refuses aspect ratios above 200.
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (2, 600, 3), dtype=np.uint8)).save(src / "sliver.png")
    # One decode block and one scorer batch of 8 hold all four images: the failing one among good ones.
    cfg = load_config(ScoreConfig, None, [f"input.uri={src}", f"output.uri={tmp_path / 'out'}", *FAST,
                                          "decode.batch_size=8", "score.batch_size=8"])
    summary = run_score(cfg)
    rows = {Path(r["path"]).name: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert sorted(rows) == sorted([p.name for p in normal] + ["sliver.png"])
    bad = rows.pop("sliver.png")
    assert bad["error_kind"] == "model_error" and bad["score"] is None
    assert "aspect ratio must be smaller than 200" in bad["error"] and bad["error"].startswith("ValueError")
    assert (bad["width"], bad["height"]) == (600, 2)  # decoded fine; only the model refused it
    for row in rows.values():
        assert row["error_kind"] is None and row["error"] is None
        probs = np.asarray(row["global_probs"][0])
        assert probs.shape == (7,) and probs.sum() == pytest.approx(1.0)
        assert row["score"] == pytest.approx(probs @ np.arange(1, 8))
    assert summary.errors == {"model_error": 1} and summary.scored == 3


# ---- 4. object storage that fails for a few seconds, then for good ------------------------------


@pytest.fixture
def moto_s3():
    """A moto S3 server on 127.0.0.1 with one bucket; `restart()` brings it back on the same port
    with the same objects (moto keeps its state in this process, not in the server thread)."""
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)]
    servers[0].start()
    host, port = servers[0].get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )
    client.create_bucket(Bucket=BUCKET)

    class Moto:
        storage = StorageConfig(endpoint_url=endpoint, key=KEY, secret=SECRET, region="us-east-1")
        up = True

        @staticmethod
        def stop() -> None:
            servers[-1].stop()
            Moto.up = False

        @staticmethod
        def restart() -> None:
            servers.append(ThreadedMotoServer(ip_address=host, port=port, verbose=False))
            servers[-1].start()
            Moto.up = True

    yield Moto
    if Moto.up:
        servers[-1].stop()


def _s3_cfg(moto, prefix: str, *extra: str) -> ScoreConfig:
    storage = [f"output.storage.{k}={v}" for k, v in moto.storage.model_dump(exclude_none=True).items() if k != "anon"]
    return _cfg(f"s3://{BUCKET}/{prefix}", "input.limit=16", *storage, *extra)


def _store_outage(moto, ready, what: str, committed, outage_s: float | None):
    """A fault for `beside_the_job`: once `ready()` holds, the store goes down for `outage_s` seconds
    (None: for good); it reports the rows `committed()` counted then."""

    def outage(job_done: threading.Event) -> dict:
        wait_for(ready, what)
        seen = {"committed": committed(), "job_done": job_done.is_set()}
        moto.stop()
        if outage_s is not None:
            time.sleep(outage_s)
            moto.restart()
        return seen

    return outage


def _stop_store_after_first_commit(moto, cfg: ScoreConfig, outage_s: float | None):
    """The output store goes down after the first committed part."""
    fs, path = resolve_fs(cfg.output.uri, cfg.output.storage)
    return _store_outage(moto, lambda: committed_rows(fs, path), "a first committed part",
                         lambda: committed_rows(fs, path), outage_s)


def _s3_rows(cfg: ScoreConfig) -> list[dict]:
    fs, path = resolve_fs(cfg.output.uri, cfg.output.storage)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pylist()


def test_object_store_outage_is_retried_with_backoff(ray_local, moto_s3):
    """The store goes away for 4 s mid-run; the SDK's retries with backoff ride it out."""
    cfg = _s3_cfg(moto_s3, "transient")
    inputs = list_inputs(cfg.input)
    with beside_the_job(_stop_store_after_first_commit(moto_s3, cfg, outage_s=4)) as seen:
        summary = run_score(cfg)
    assert not seen["job_done"] and 0 < seen["committed"] < len(inputs)  # the outage hit a running job
    _assert_each_input_once(_s3_rows(cfg), inputs)
    assert summary.rows == summary.unique_paths == summary.new_rows == len(inputs)


def test_dead_object_store_fails_clearly_and_keeps_what_was_written(ray_local, moto_s3):
    """The store goes away for good: one clear storage message; the parts written stay whole, and the
    same run resumed once the store is back scores the remainder only."""
    cfg = _s3_cfg(moto_s3, "permanent", "output.storage.retry_attempts=2")
    inputs = list_inputs(cfg.input)
    with beside_the_job(_stop_store_after_first_commit(moto_s3, cfg, outage_s=None)) as seen, \
            pytest.raises(StorageError) as failed:
        run_score(cfg)
    assert not seen["job_done"] and 0 < seen["committed"] < len(inputs)
    message = str(failed.value)
    assert "AWS Error NETWORK_CONNECTION" in message and "output.storage.retry_attempts=2" in message
    assert f"s3://{BUCKET}/permanent" in message and len(message.splitlines()) <= 3

    moto_s3.restart()  # to look at what the failed run left: each part whole and readable
    fs, path = resolve_fs(cfg.output.uri, cfg.output.storage)
    parts = pads.dataset(path, filesystem=fs, format="parquet").files
    rows = [r for part in parts for r in pq.read_table(part, filesystem=fs).to_pylist()]
    assert all(pq.read_schema(part, filesystem=fs).equals(OUTPUT_SCHEMA) for part in parts)
    assert len(rows) >= seen["committed"] and all(math.isfinite(r["score"]) for r in rows)
    # A part whose checkpoint commit the outage cut off may repeat rows of a retried write; it is still
    # pending, and the resumed run below deletes it (two-phase commit) before scoring its rows again.
    assert {r["path"] for r in rows} <= set(inputs)

    resumed = run_score(_s3_cfg(moto_s3, "permanent"))  # the same run resumed: the remainder only
    _assert_each_input_once(_s3_rows(cfg), inputs)
    assert resumed.rows == len(inputs) and 0 < resumed.new_rows <= len(inputs) - seen["committed"]


# ---- 5. the input store (moto) read through Ray's decode tasks: a blip, then an outage ----------


def _upload_inputs(moto, n: int) -> list[str]:
    """The first n bundled samples as s3://BUCKET/in/<name>; returns their URIs."""
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=moto.storage.endpoint_url, region_name="us-east-1", aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    local = list_inputs(InputConfig(uri="builtin:samples", limit=n))
    for path in local:
        client.put_object(Bucket=BUCKET, Key=f"in/{Path(path).name}", Body=Path(path).read_bytes())
    return sorted(f"s3://{BUCKET}/in/{Path(p).name}" for p in local)


def _s3_input_cfg(moto, out: Path, *extra: str) -> ScoreConfig:
    storage = [f"input.storage.{k}={v}" for k, v in moto.storage.model_dump(exclude_none=True).items() if k != "anon"]
    return load_config(ScoreConfig, None, [f"input.uri=s3://{BUCKET}/in", f"output.uri={out}", *FAST, *storage, *extra])


def _stop_store_once_listed(moto, out: Path, n_inputs: int, outage_s: float | None):
    """The input store goes down as soon as the run has listed its n_inputs inputs (before any decode
    task reads one)."""
    listed = out / "_inputs" / "inputs.parquet"

    def inputs_written() -> bool:
        try:
            return pq.read_metadata(listed).num_rows == n_inputs
        except (FileNotFoundError, OSError):  # not there yet, or caught mid-write
            return False

    out_fs = pafs.LocalFileSystem()
    return _store_outage(moto, inputs_written, "the run's input list", lambda: committed_rows(out_fs, str(out)), outage_s)


def test_s3_inputs_survive_a_store_blip(ray_local, moto_s3, tmp_path):
    """Inputs read from S3 by Ray's decode tasks; the store stops for 4 s as the run starts reading:
    the SDK's retries (and Ray Data's task retries) ride it out, and no image becomes a read_error."""
    inputs = _upload_inputs(moto_s3, 12)
    out = tmp_path / "out"
    cfg = _s3_input_cfg(moto_s3, out)
    with beside_the_job(_stop_store_once_listed(moto_s3, out, len(inputs), outage_s=4)) as seen:
        summary = run_score(cfg)
    assert not seen["job_done"] and seen["committed"] == 0  # down before the first image was scored
    rows = pq.read_table(out).to_pylist()
    _assert_each_input_once(rows, inputs)
    assert summary.errors == {} and summary.rows == summary.new_rows == len(inputs)
    print(f"\ninput-store blip: {len(inputs)} inputs, {summary.scored} scored, errors {summary.errors}")


def test_dead_input_store_stops_the_run_and_a_resume_scores_the_missing_ones(ray_local, moto_s3, tmp_path):
    """A first run scores 5 of the inputs; the second (all 12) finds the input store gone for good: one
    storage error naming input.uri and input.storage, no error rows written; once the store is back the
    same command scores exactly the 7 missing inputs."""
    inputs = _upload_inputs(moto_s3, 12)
    out = tmp_path / "out"
    first = run_score(_s3_input_cfg(moto_s3, out, "input.limit=5"))
    assert first.rows == first.scored == 5
    cfg = _s3_input_cfg(moto_s3, out, "input.storage.retry_attempts=1")
    with beside_the_job(_stop_store_once_listed(moto_s3, out, len(inputs), outage_s=None)) as seen, \
            pytest.raises(StorageError) as failed:
        run_score(cfg)
    message = str(failed.value)
    assert f"input.uri='s3://{BUCKET}/in'" in message and "input.storage.retry_attempts=1" in message
    assert "StoreUnavailable" in message and "NETWORK_CONNECTION" in message and len(message.splitlines()) <= 3
    before = pq.read_table(out).to_pylist()
    assert all(r["error_kind"] is None for r in before)  # nothing final was written for the unread images
    committed_before = committed_rows(pafs.LocalFileSystem(), str(out))

    moto_s3.restart()
    resumed = run_score(_s3_input_cfg(moto_s3, out))
    rows = pq.read_table(out).to_pylist()
    _assert_each_input_once(rows, inputs)
    assert resumed.new_rows == len(inputs) - committed_before
    print(f"\ninput-store outage: {len(inputs)} inputs; committed before the outage run {seen['committed']}, "
          f"after it {committed_before} (rows on disk {len(before)}); the resume scored {resumed.new_rows}, "
          f"output now {resumed.rows} rows, {resumed.unique_paths} unique, errors {resumed.errors}")


# ---- 6. output.mode=retry-errors ---------------------------------------------------------------


def test_retry_errors_rescores_error_rows_and_keeps_each_input_once(ray_local, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = sorted(p for p in samples_dir().iterdir() if p.suffix == ".jpg")[:4]
    for p in good:
        shutil.copy(p, src / p.name)
    (src / "later.jpg").write_bytes(b"not yet an image")  # an error row on the first run
    out = tmp_path / "out"
    first = run_score(load_config(ScoreConfig, None, [f"input.uri={src}", f"output.uri={out}", *FAST]))
    assert first.errors == {"not_an_image": 1} and first.scored == 4
    scores_before = {r["path"]: r["score"] for r in pq.read_table(out).to_pylist() if r["score"] is not None}

    shutil.copy(good[0], src / "later.jpg")  # the file is fixed
    again = run_score(load_config(ScoreConfig, None, [f"input.uri={src}", f"output.uri={out}", *FAST,
                                                      "output.mode=retry-errors"]))
    rows = pq.read_table(out).to_pylist()
    _assert_each_input_once(rows, [str(p) for p in sorted(src.iterdir())])
    assert again.new_rows == 1 and again.errors == {} and again.rows == 5
    by_path = {r["path"]: r["score"] for r in rows}
    assert all(by_path[p] == s for p, s in scores_before.items())  # the other rows are untouched
    assert by_path[str(src / "later.jpg")] == pytest.approx(by_path[str(src / good[0].name)], abs=1e-6)
