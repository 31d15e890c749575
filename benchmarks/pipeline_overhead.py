"""What the Ray Data job costs over a plain loop of the same stages: its fixed start-up, and its steady state.

Start-up: seconds from `run_score` until Ray Data commits the first output part (the first committed
file in the output's `_checkpoint` folder), and the job's total: a job on a fresh local Ray (`ray.init`
timed apart; every worker a new process, untimed otherwise) and the same job again on the warm Ray.

Steady state: the scoring job (`run_score`) and a plain loop calling the very same stages in one process
(decode_batch -> [SegmentStage] -> ScoreStage -> finalize on blocks of the job's size, then one Parquet
file) each score N and 4N images; the marginal rate 3N / (t(4N) - t(N)) leaves out what a run pays
once (actor start-up, model loading), whichever way it is paid (timing from the first output row
would favour the job: its decode tasks and SAM2 actors work ahead while the scorer loads). At equal
CPU: the whole process tree (driver, Ray's daemons and workers, or the loop) is pinned to 1 core (one
scorer actor, one SAM2 actor; a one-thread loop) or 2 cores (two of each; two loop threads, each
over half the blocks), with torch at one thread per actor or loop thread. Without segmentation the
inputs have a 768 px long side and the MLLM sees up to 200704 px (256 image tokens): tens of
milliseconds per image on one core.

    python benchmarks/pipeline_overhead.py --quick     # N = 64 (segmentation off), 4 (on)
    python benchmarks/pipeline_overhead.py             # N = 128 and 8
"""
from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: the loop, and every Ray worker, at one thread

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from harness import fresh_ray, scratch_uri, start_ray, tiny_config, write_variants

from rayiqa.config import ScoreConfig
from rayiqa.io.sources import list_inputs
from rayiqa.pipeline import stages
from rayiqa.pipeline.runtime import model_provenance
from rayiqa.pipeline.score_job import CHECKPOINT_DIR, run_score

MAX_PIXELS = 200704  # 256 image tokens per request: tens of ms per image on one core (16 tokens: ~8 ms)
BLOCK = {False: 16, True: 2}  # rows per block, segmentation off (the job's default) / on: blocks for two actors at N


def job_config(inputs: str, out: str, segmentation: bool, cpus: int) -> ScoreConfig:
    """The tiny-preset job with `cpus` scorer (and SAM2) actors and blocks of BLOCK rows."""
    rows = BLOCK[segmentation]
    return tiny_config(inputs, out, segmentation, [
        f"mllms=[{{preset: tiny, max_pixels: {MAX_PIXELS}, batch_size: {rows}}}]",
        f"decode.batch_size={rows}", f"segment.batch_size={rows}", f"score.batch_size={rows}",
        f"score.concurrency={cpus}", f"segment.concurrency={cpus}",
    ])


def first_committed(out: Path, started: float, stop: threading.Event, seen: dict) -> None:
    """Poll the output's checkpoint folder until a part is committed (Ray Data renames its
    `<id>.pending.parquet` checkpoint to `<id>.parquet` once the part is written)."""
    folder = out / CHECKPOINT_DIR
    while not stop.is_set():
        if folder.is_dir() and any(p.suffix == ".parquet" and not p.name.endswith(".pending.parquet") for p in folder.iterdir()):
            seen["first"] = time.perf_counter() - started
            return
        time.sleep(0.02)


def ray_job(cfg: ScoreConfig) -> tuple[float, float]:
    """(seconds to the first committed part, total seconds) of one run of the scoring job."""
    out, stop, seen = Path(cfg.output.uri), threading.Event(), {}
    started = time.perf_counter()
    watcher = threading.Thread(target=first_committed, args=(out, started, stop, seen), daemon=True)
    watcher.start()
    summary = run_score(cfg)
    total = time.perf_counter() - started
    stop.set()
    watcher.join()
    assert summary.new_rows == summary.inputs == summary.scored, f"{summary.new_rows} rows, {summary.scored} scored of {summary.inputs}"
    return seen.get("first", total), total


def loop_blocks(cfg: ScoreConfig, blocks: list[list[str]], tables: list, first: dict, started: float) -> None:
    """The job's stages in a loop over `blocks`, on this thread, with models of its own."""
    import torch

    torch.set_num_threads(1)
    segmenter = stages.SegmentStage(cfg.segmenter, cfg.method) if cfg.method.segmentation else None
    scorer = stages.ScoreStage(cfg.mllms[0], cfg.method, 0, last=True)
    for paths in blocks:
        batch = stages.decode_batch({"path": np.asarray(paths, dtype=object)}, cfg.input)
        batch = scorer(segmenter(batch) if segmenter else batch)
        tables.append(stages.finalize(batch, [cfg.mllms[0].preset], cfg.method))
        first.setdefault("first", time.perf_counter() - started)


def plain_loop(cfg: ScoreConfig, threads: int) -> tuple[float, float]:
    """(seconds to the first finalized block, total seconds) of the stages called in `threads` threads
    (each over every `threads`-th block, models loaded inside), then one Parquet file: the job without Ray."""
    started = time.perf_counter()
    paths = list_inputs(cfg.input)
    rows = cfg.decode.batch_size
    blocks = [paths[i : i + rows] for i in range(0, len(paths), rows)]
    tables: list = []
    first: dict = {}
    workers = [threading.Thread(target=loop_blocks, args=(cfg, blocks[t::threads], tables, first, started))
               for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    table = pa.concat_tables(tables)
    assert table.num_rows == len(paths) and table.column("score").null_count == 0, "the loop lost or failed rows"
    out = Path(cfg.output.uri)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "loop.parquet")
    return first["first"], time.perf_counter() - started


@dataclass
class Steady:
    """One row of the table: N and 4N images each way, at one CPU budget and segmentation setting."""

    cpus: int
    segmentation: bool
    n: int
    ray_s: list[tuple[float, float]]  # (to the first row, total) at N and 4N
    loop_s: list[tuple[float, float]]

    def rate(self, s: list[tuple[float, float]]) -> float:
        """Images/s between N and 4N images."""
        return 3 * self.n / (s[1][1] - s[0][1])

    @property
    def ratio(self) -> float:
        return self.rate(self.ray_s) / self.rate(self.loop_s)


def steady(inputs: dict[bool, dict[int, str]], work: Path, cpus: int, segmentation: bool) -> Steady:
    """Loop and job at N and 4N, interleaved so that a change of the machine's load hits both."""
    times: dict[str, list[tuple[float, float]]] = {"ray": [], "loop": []}
    for size, uri in inputs[segmentation].items():
        tag = f"{cpus}cpu-seg{int(segmentation)}-{size}"
        times["loop"].append(plain_loop(job_config(uri, str(work / f"loop-{tag}"), segmentation, cpus), cpus))
        times["ray"].append(ray_job(job_config(uri, str(work / f"ray-{tag}"), segmentation, cpus)))
    return Steady(cpus, segmentation, min(inputs[segmentation]), times["ray"], times["loop"])


def _pair(times: tuple[float, float]) -> str:
    return f"{times[0]:.1f}/{times[1]:.1f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 64 images without segmentation, 4 with")
    ap.add_argument("-n", type=int, default=128, help="N without segmentation (4N is run too)")
    ap.add_argument("--seg-n", type=int, default=8, help="N with segmentation (SAM2 tiny at 256 px, ~1 s per image on a core)")
    args = ap.parse_args(argv)
    sizes = {False: 64 if args.quick else args.n, True: 4 if args.quick else args.seg_n}
    cores = sorted(os.sched_getaffinity(0))
    budgets = [c for c in (1, 2) if c <= len(cores)]
    _, work = scratch_uri(None, "rayiqa-bench-")
    startup, rows = [], []
    try:
        side = {False: 768, True: None}  # segmentation on: the samples' ~384 px (SAM2 already ~1 s per image)
        inputs = {seg: {k * n: write_variants(k * n, str(work / f"in-{int(seg)}-{k * n}"), side[seg]) for k in (1, 4)}
                  for seg, n in sizes.items()}
        model_provenance(job_config(inputs[True][sizes[True]], str(work / "x"), True, 1))  # tiny checkpoints built once
        plain_loop(job_config(inputs[True][sizes[True]], str(work / "warm"), True, 1), 1)  # the loop's imports, untimed
        for cpus in budgets:
            os.sched_setaffinity(0, cores[:cpus])  # inherited by Ray's daemons and workers started below
            sizing = job_config(inputs[True][sizes[True]], str(work / "x"), True, cpus)  # the larger (segmenting) job
            t0 = time.perf_counter()
            start_ray(sizing)
            init_s = time.perf_counter() - t0
            try:
                fresh = ray_job(job_config(inputs[False][sizes[False]], str(work / f"fresh-{cpus}"), False, cpus))
                rows += [steady(inputs, work, cpus, seg) for seg in (False, True)]
            finally:
                fresh_ray(sizing)
            startup.append((cpus, init_s, *fresh, *rows[-2].ray_s[0]))  # the same job (segmentation off, N), warm
    finally:
        os.sched_setaffinity(0, cores)
        shutil.rmtree(work, ignore_errors=True)
    n0 = sizes[False]
    print(f"\npipeline_overhead: tiny presets, MLLM at <= {MAX_PIXELS} px, SAM2 tiny 256 px 8x8 points, CPU, "
          f"{len(cores)} cores available")
    print(f"start-up of the Ray job (segmentation off, blocks of {BLOCK[False]}), seconds from run_score:")
    print(f"  {'cores':>5} {'ray.init':>8} {f'fresh Ray, {n0} images: first row':>34} {'total':>6} "
          f"{'warm Ray, the same: first row':>29} {'total':>6}")
    for cpus, init_s, first_f, total_f, first_w, total_w in startup:
        print(f"  {cpus:>5} {init_s:8.2f} {first_f:34.2f} {total_f:6.2f} {first_w:29.2f} {total_w:6.2f}")
    print("steady state: images/s between N and 4N images, 3N / (t(4N) - t(N)); ratio = Ray job / plain loop")
    print(f"  {'cores':>5} {'segment':>7} {'N':>4} {'ray first/total s N':>20} {'4N':>12} {'loop first/total s N':>21} "
          f"{'4N':>12} {'ray img/s':>9} {'loop img/s':>10} {'loop ms/img/core':>16} {'ratio':>6}")
    for r in rows:
        print(f"  {r.cpus:>5} {'on' if r.segmentation else 'off':>7} {r.n:>4} {_pair(r.ray_s[0]):>20} {_pair(r.ray_s[1]):>12} "
              f"{_pair(r.loop_s[0]):>21} {_pair(r.loop_s[1]):>12} {r.rate(r.ray_s):9.2f} {r.rate(r.loop_s):10.2f} "
              f"{1000 * r.cpus / r.rate(r.loop_s):16.1f} {r.ratio:6.2f}")


if __name__ == "__main__":
    main()
