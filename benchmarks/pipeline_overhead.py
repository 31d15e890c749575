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

Start-up as a user pays it (`--startup`, also run first by default): `rayiqa score` in a new Python
process, seconds from its launch to the first committed part, segmentation off and on, and where
those seconds go, each phase timed in a new process by the functions the job calls: the driver's
imports, listing the inputs, preparing the output, naming the models (`model_provenance`), `ray.init`,
and what each actor does before its first block (import torch/transformers/sam2, build its model).

    python benchmarks/pipeline_overhead.py --quick     # N = 64 (segmentation off), 4 (on)
    python benchmarks/pipeline_overhead.py             # N = 128 and 8
    python benchmarks/pipeline_overhead.py --startup   # the start-up tables only
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
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


class TreeCpu:
    """CPU seconds (user + system) of this process and all its descendants (Ray's daemons and workers),
    sampled by a thread: a process counts with its last sample after it exits. A run's CPU per image
    depends far less on other load on the machine than its wall time does."""

    def __init__(self) -> None:
        import ray  # noqa: F401  (puts its bundled psutil on the path)
        import psutil

        self.me, self.error = psutil.Process(), psutil.Error
        self.seen: dict[tuple[int, float], float] = {}
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.total()

    def total(self) -> float:
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                self.seen[(proc.pid, proc.create_time())] = times.user + times.system
            except self.error:
                pass
        return sum(self.seen.values())


CPU: TreeCpu | None = None


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


def ray_job(cfg: ScoreConfig) -> tuple[float, float, float]:
    """(seconds to the first committed part, total seconds, CPU seconds) of one run of the scoring job."""
    out, stop, seen = Path(cfg.output.uri), threading.Event(), {}
    cpu = CPU.total()
    started = time.perf_counter()
    watcher = threading.Thread(target=first_committed, args=(out, started, stop, seen), daemon=True)
    watcher.start()
    summary = run_score(cfg)
    total = time.perf_counter() - started
    stop.set()
    watcher.join()
    assert summary.new_rows == summary.inputs == summary.scored, f"{summary.new_rows} rows, {summary.scored} scored of {summary.inputs}"
    return seen.get("first", total), total, CPU.total() - cpu


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


def plain_loop(cfg: ScoreConfig, threads: int) -> tuple[float, float, float]:
    """(seconds to the first finalized block, total seconds, CPU seconds) of the stages called in `threads`
    threads (each over every `threads`-th block, models loaded inside), then one Parquet file: the job without Ray."""
    cpu = CPU.total()
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
    return first["first"], time.perf_counter() - started, CPU.total() - cpu


@dataclass
class Steady:
    """One row of the table: N and 4N images each way, at one CPU budget and segmentation setting."""

    cpus: int
    segmentation: bool
    n: int
    ray_s: list[tuple[float, float, float]]  # (to the first row, total, CPU seconds) at N and 4N
    loop_s: list[tuple[float, float, float]]
    load: tuple[float, float]  # the 1-minute load average before and after

    def rate(self, s: list[tuple[float, float, float]]) -> float:
        """Images/s between N and 4N images."""
        return 3 * self.n / (s[1][1] - s[0][1])

    def cpu_ms(self, s: list[tuple[float, float, float]]) -> float:
        """CPU milliseconds per image between N and 4N images."""
        return 1000 * (s[1][2] - s[0][2]) / (3 * self.n)

    @property
    def ratio(self) -> float:
        return self.rate(self.ray_s) / self.rate(self.loop_s)


def steady(inputs: dict[bool, dict[int, str]], work: Path, cpus: int, segmentation: bool) -> Steady:
    """Loop and job at N and 4N, interleaved so that a change of the machine's load hits both."""
    times: dict[str, list[tuple[float, float, float]]] = {"ray": [], "loop": []}
    load = os.getloadavg()[0]
    for size, uri in inputs[segmentation].items():
        tag = f"{cpus}cpu-seg{int(segmentation)}-{size}"
        times["loop"].append(plain_loop(job_config(uri, str(work / f"loop-{tag}"), segmentation, cpus), cpus))
        times["ray"].append(ray_job(job_config(uri, str(work / f"ray-{tag}"), segmentation, cpus)))
    return Steady(cpus, segmentation, min(inputs[segmentation]), times["ray"], times["loop"], (load, os.getloadavg()[0]))


# Each phase of a job's start-up, timed in a new process after the imports it needs (what it adds).
PHASES = {
    "driver imports (rayiqa.cli, score_job)": ("", "import rayiqa.cli, rayiqa.pipeline.score_job"),
    "list inputs": ("from rayiqa.io.sources import list_inputs", "list_inputs(cfg.input)"),
    "prepare output (clear, input list)": ("from rayiqa.io.sources import list_inputs; from rayiqa.pipeline import score_job",
                                           "score_job._prepare_output(cfg, list_inputs(cfg.input))"),
    "name the models (model_provenance)": ("from rayiqa.pipeline import score_job", "score_job.model_provenance(cfg)"),
    "ray.init (local, fresh)": ("from rayiqa.pipeline import score_job",
                                "score_job.ensure_ray(cfg.ray, score_job.cpus_needed(cfg))"),
    "segment actor: import torch + sam2, build SAM2": ("from rayiqa.pipeline import stages",
                                                      "stages.SegmentStage(cfg.segmenter, cfg.method)"),
    "score actor: import torch + transformers, load the MLLM": (
        "from rayiqa.pipeline import stages", "stages.ScoreStage(cfg.mllms[0], cfg.method, 0, last=True)"),
}
PHASE = """import json, sys, time
from rayiqa.config import ScoreConfig, load_config
cfg = load_config(ScoreConfig, None, json.loads(sys.argv[1]))
{setup}
started = time.perf_counter()
{timed}
print(json.dumps(time.perf_counter() - started))
"""


def phase_seconds(overrides: list[str], setup: str, timed: str) -> float:
    """Seconds of `timed` in a new Python process, after `setup`."""
    out = subprocess.run([sys.executable, "-c", PHASE.format(setup=setup, timed=timed), json.dumps(overrides)],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli_first_row(overrides: list[str], out: Path) -> tuple[float, float]:
    """(seconds to the first committed part, total seconds) of `rayiqa score` in a new process."""
    stop, seen = threading.Event(), {}
    started = time.perf_counter()
    watcher = threading.Thread(target=first_committed, args=(out, started, stop, seen), daemon=True)
    watcher.start()
    subprocess.run([sys.executable, "-m", "rayiqa.cli", "score", *overrides], capture_output=True, timeout=900, check=True)
    total = time.perf_counter() - started
    stop.set()
    watcher.join()
    return seen.get("first", total), total


def cli_startup(work: Path, n: int) -> list[tuple[bool, tuple[float, float], dict[str, float]]]:
    """`rayiqa score` from a new process on n images, segmentation off and on: (segmentation,
    (first committed part, total), {phase: seconds}); the segment actor's phase only when it segments."""
    rows = []
    for seg in (False, True):
        inputs = write_variants(n, str(work / f"startup-in-{int(seg)}"), None)
        out = work / f"startup-{int(seg)}"
        overrides = [f"input.uri={inputs}", f"output.uri={out}", "output.mode=overwrite",
                     f"mllms=[{{preset: tiny, max_pixels: {MAX_PIXELS}}}]", f"method.segmentation={str(seg).lower()}",
                     "segmenter.points_per_side=8"]
        first = cli_first_row(overrides, out)
        phases = {name: phase_seconds(overrides, *code) for name, code in PHASES.items() if seg or "segment actor" not in name}
        rows.append((seg, first, phases))
    return rows


def _pair(times: tuple[float, ...]) -> str:
    return f"{times[0]:.1f}/{times[1]:.1f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 64 images without segmentation, 4 with")
    ap.add_argument("-n", type=int, default=128, help="N without segmentation (4N is run too)")
    ap.add_argument("--seg-n", type=int, default=8, help="N with segmentation (SAM2 tiny at 256 px, ~1 s per image on a core)")
    ap.add_argument("--startup", action="store_true", help="only the start-up of `rayiqa score` from a new process")
    args = ap.parse_args(argv)
    global CPU
    CPU = TreeCpu()
    _, work = scratch_uri(None, "rayiqa-bench-")
    try:
        launched = cli_startup(work, 16)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nstart-up of `rayiqa score` in a new process, 16 sample variants, tiny presets, {len(os.sched_getaffinity(0))} cores:")
    for seg, (first, total), phases in launched:
        print(f"  segmentation {'on' if seg else 'off'}: first committed part {first:.2f} s, total {total:.2f} s; "
              "phases, each timed in a new process:")
        for name, seconds in phases.items():
            print(f"    {name:<58} {seconds:6.2f} s")
    if args.startup:
        return
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
            startup.append((cpus, init_s, *fresh[:2], *rows[-2].ray_s[0][:2]))  # the same job (segmentation off, N), warm
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
    print("steady state: images/s between N and 4N images, 3N / (t(4N) - t(N)); ratio = Ray job / plain loop; CPU ms per "
          "image between N and 4N of the whole process tree (Ray's daemons and workers included), CPU ratio = loop / job")
    print(f"  {'cores':>5} {'segment':>7} {'N':>4} {'ray first/total s N':>20} {'4N':>12} {'loop first/total s N':>21} "
          f"{'4N':>12} {'ray img/s':>9} {'loop img/s':>10} {'ratio':>6} {'ray CPU ms':>10} {'loop CPU ms':>11} "
          f"{'CPU ratio':>9} {'load':>11}")
    for r in rows:
        print(f"  {r.cpus:>5} {'on' if r.segmentation else 'off':>7} {r.n:>4} {_pair(r.ray_s[0]):>20} {_pair(r.ray_s[1]):>12} "
              f"{_pair(r.loop_s[0]):>21} {_pair(r.loop_s[1]):>12} {r.rate(r.ray_s):9.2f} {r.rate(r.loop_s):10.2f} "
              f"{r.ratio:6.2f} {r.cpu_ms(r.ray_s):10.1f} {r.cpu_ms(r.loop_s):11.1f} "
              f"{r.cpu_ms(r.loop_s) / r.cpu_ms(r.ray_s):9.2f} {r.load[0]:5.1f}-{r.load[1]:<5.1f}")


if __name__ == "__main__":
    main()
