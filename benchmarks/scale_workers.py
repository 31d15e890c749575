"""Does throughput grow with actors? 1 vs 2 scorer actors and 1 vs 2 segmenter actors, in one run.

Runs the scoring job (tiny presets) four times on the same JPEG variants of the bundled samples (long
side 768 px): whole-image scoring with `score.concurrency` 1 and 2, then mix-grained scoring (SAM2 on)
with `segment.concurrency` 1 and 2, each on a fresh local Ray (or on the cluster at `--address`).
Prints images/s per run, the ratios 2 actors / 1 actor, and Ray Data's per-operator stats of each run
as where the time went (read, decode, segment, score, finalize + write). Actors take 0.5 CPU each and
Ray gives each one thread (OMP_NUM_THREADS), so on a 2-core machine 2 actors can at best double.

Two settings make the comparison about the actors rather than about start-up and scheduling:
- the scorer sees the images at up to 768 px (~770 image tokens), so the tiny MLLM costs ~0.1 s CPU
  per image and the model, not the ~17 s of Ray and model start-up, decides the run time;
- blocks of one SAM2 batch (`decode.batch_size` = `segment.batch_size` = 2): Ray Data hands each actor
  up to two blocks at once, so with 16-image blocks the first SAM2 actor to be ready took every block
  of a small run and the second one idled.

    python benchmarks/scale_workers.py --quick      # 120 images whole-image, 12 with SAM2, ~4 min
    ray job submit -- python benchmarks/scale_workers.py --address auto --workdir s3://bucket/bench \
        --n-score 20000 --n-segment 2000 --actors 8
"""
from __future__ import annotations

import argparse
import shutil

from harness import Measured, format_stage_times, fresh_ray, measured_run, scratch_uri, tiny_config, write_variants


SIDE = 768  # long side of the input variants
LOAD = {  # per compared stage, see the module docstring
    "score": ["mllms=[{preset: tiny, max_pixels: 602112, batch_size: 8}]", "decode.batch_size=8", "score.batch_size=8"],
    "segment": ["decode.batch_size=2"],  # = tiny_config's segment.batch_size
}


def run_pair(workdir: str, inputs: str, n: int, stage: str, actors: int, address: str | None) -> dict[int, Measured]:
    """The job on the first n inputs with 1 and `actors` actors in `stage` ("score" or "segment")."""
    results = {}
    for count in (1, actors):
        overrides = [*LOAD[stage], f"input.limit={n}", f"{stage}.concurrency=[{count}, {count}]"]
        overrides += [f"ray.address={address}"] if address else []
        cfg = tiny_config(inputs, f"{workdir}/out-{stage}-{count}", stage == "segment", overrides)
        try:
            results[count] = measured_run(cfg, sample_every=1.0)
        finally:
            fresh_ray(cfg)
    return results


def report(title: str, results: dict[int, Measured]) -> str:
    """Throughput per actor count, the ratio, and each run's per-stage time."""
    one, many = sorted(results)
    lines = [title]
    for count in (one, many):
        m = results[count]
        per_row = m.output_bytes / max(1, m.summary.new_rows)
        lines.append(f"  {count} actor(s): {m.summary.new_rows} images in {m.summary.seconds:6.1f} s = {m.images_per_s:6.2f} images/s"
                     f" (output {per_row:.0f} Parquet bytes/row)")
    lines.append(f"  throughput ratio {many} actors / {one} actor = {results[many].images_per_s / results[one].images_per_s:.2f}")
    for count in (one, many):
        lines += [f"  where the time went with {count} actor(s):", format_stage_times(results[count].stats)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="120 images whole-image, 12 images with SAM2")
    ap.add_argument("--n-score", type=int, default=480, help="images for the scorer comparison (segmentation off)")
    ap.add_argument("--n-segment", type=int, default=48, help="images for the segmenter comparison (SAM2 on)")
    ap.add_argument("--actors", type=int, default=2, help="the larger actor count compared with 1")
    ap.add_argument("--address", default=None, help="a running cluster (e.g. auto under `ray job submit`)")
    ap.add_argument("--workdir", default=None, help="inputs + outputs folder all nodes can read (s3://...); default a local temp dir")
    args = ap.parse_args(argv)
    n_score, n_segment = (120, 12) if args.quick else (args.n_score, args.n_segment)
    workdir, local = scratch_uri(args.workdir, "rayiqa-scale-workers-")
    try:
        inputs = write_variants(max(n_score, n_segment), f"{workdir}/in", side=SIDE)
        scorers = run_pair(workdir, inputs, n_score, "score", args.actors, args.address)
        segmenters = run_pair(workdir, inputs, n_segment, "segment", args.actors, args.address)
    finally:
        if local:
            shutil.rmtree(local, ignore_errors=True)
    where = f"cluster {args.address}" if args.address else "local Ray, 0.5 CPU per actor"
    print(f"\nscale_workers: tiny presets, {where}")
    print(report(f"scorer actors (whole-image scoring, {n_score} images of {SIDE} px):", scorers))
    print(report(f"segmenter actors (SAM2 tiny 256 px + scoring, {n_segment} images, 1 scorer):", segmenters))


if __name__ == "__main__":
    main()
