"""Ray Data scoring job vs a plain Python loop over the same tiny models and images, in one run.

Two jobs are compared, each both ways: LLM-IQA scoring alone, and the same job with its LLM-TTA
stage (`adapt.method: llm-tta`, tiny-cnn backbone, batches of B=8 ranked by the job's own LLM-IQA
scores). The loop calls the very same stage code in one process (decode -> [segment] -> score ->
[pack -> AdaptStage] -> finalize -> one Parquet file), so each ratio is what Ray Data's streaming,
actor pools and Parquet writing cost or gain; the difference between the two jobs is what the TTA
stage costs each way. Ray's own start-up is outside both timings; actor start-up and model loading
are inside the job's, model loading inside the loop's. The loop's process imports its libraries in
an untimed warm-up over a few images first, so neither timed loop pays them (a Ray actor imports its
own, inside the job's time).

    python benchmarks/pipeline_overhead.py --quick      # 32 images, segmentation off, ~2 min
    python benchmarks/pipeline_overhead.py -n 64 --segmentation
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from harness import fresh_ray, scratch_uri, start_ray, tiny_config, write_variants

from rayiqa.config import ScoreConfig
from rayiqa.io.sources import list_inputs
from rayiqa.pipeline import stages
from rayiqa.pipeline.adapt import AdaptStage, pack_rows
from rayiqa.pipeline.runtime import model_provenance
from rayiqa.pipeline.score_job import run_score

JOBS = {
    "llm-iqa": [],
    "llm-iqa + llm-tta": ["adapt.method=llm-tta", "adapt.ranker=llm-iqa"],
}


def plain_loop(cfg: ScoreConfig) -> float:
    """Seconds for the job's stages called in a loop, one process, no Ray (models loaded inside)."""
    started = time.perf_counter()
    paths = list_inputs(cfg.input)
    adapting = cfg.adapt.method != "none"
    window = cfg.adapt.stage.batch_size if adapting else cfg.score.batch_size  # rows per call, as in the job
    segmenter = stages.SegmentStage(cfg.segmenter, cfg.method) if cfg.method.segmentation else None
    scorers = [stages.ScoreStage(m, cfg.method, k) for k, m in enumerate(cfg.mllms)]
    adapter = AdaptStage(cfg.adapt, cfg.mllms, cfg.method) if adapting else None
    model_ids = [m.preset for m in cfg.mllms]
    tables = []
    for i in range(0, len(paths), window):
        batch = stages.decode_batch({"path": np.asarray(paths[i : i + window], dtype=object)}, cfg.input)
        if segmenter is not None:
            batch = segmenter(batch)
        for scorer in scorers:
            batch = scorer(batch)
        if adapter is not None:
            batch = adapter(pack_rows(batch))
        tables.append(stages.finalize(batch, model_ids, cfg.method))
    out = Path(cfg.output.uri)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), out / "loop.parquet")
    return time.perf_counter() - started


def compare(inputs: str, work: Path, segmentation: bool, job: str) -> tuple[float, float]:
    """(Ray Data job seconds, plain loop seconds) for one job of `JOBS` on the same inputs."""
    overrides = JOBS[job]
    slug = job.replace(" ", "").replace("+", "_")
    ray_cfg = tiny_config(inputs, str(work / f"ray-{slug}"), segmentation, overrides)
    try:
        start_ray(ray_cfg)
        summary = run_score(ray_cfg)
        assert summary.new_rows == summary.inputs, f"{job}: {summary.new_rows} rows for {summary.inputs} inputs"
    finally:
        fresh_ray(ray_cfg)
    return summary.seconds, plain_loop(tiny_config(inputs, str(work / f"loop-{slug}"), segmentation, overrides))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 images, segmentation off")
    ap.add_argument("-n", type=int, default=48, help="images")
    ap.add_argument("--segmentation", action="store_true", help="run SAM2 (tiny, 256 px) in both jobs")
    args = ap.parse_args(argv)
    n = 32 if args.quick else args.n
    _, work = scratch_uri(None, "rayiqa-bench-")
    try:
        inputs = write_variants(n, str(work / "in"))
        model_provenance(tiny_config(inputs, str(work / "x"), True))  # build the tiny checkpoints before timing
        plain_loop(tiny_config(inputs, str(work / "warm"), args.segmentation, [*JOBS["llm-iqa + llm-tta"], "input.limit=8"]))
        seconds = {job: compare(inputs, work, args.segmentation, job) for job in JOBS}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\npipeline_overhead: {n} images, tiny presets, CPU, segmentation {'on' if args.segmentation else 'off'}")
    print(f"{'job':<20} {'ray s':>8} {'loop s':>8} {'ray img/s':>10} {'loop img/s':>11} {'ratio ray/loop':>15}")
    for job, (ray_s, loop_s) in seconds.items():
        print(f"{job:<20} {ray_s:8.2f} {loop_s:8.2f} {n / ray_s:10.2f} {n / loop_s:11.2f} {loop_s / ray_s:15.2f}")
    (base_ray, base_loop), (tta_ray, tta_loop) = seconds.values()
    print(f"TTA stage cost: ray +{tta_ray - base_ray:.2f} s, loop +{tta_loop - base_loop:.2f} s "
          f"(ratio of the added seconds ray/loop = {(tta_ray - base_ray) / (tta_loop - base_loop):.2f})")


if __name__ == "__main__":
    main()
