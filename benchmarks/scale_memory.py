"""Does memory stay flat as the input grows? The scoring job over N and 10*N images, in one run.

For each size it prints the peak driver RSS, the peak summed RSS (and PSS, which does not count
shared object-store pages twice) of the Ray worker processes, the object store's peak bytes in use
and the bytes spilled during the run, and the throughput; then the ratios 10N / N (goal: <= 1.2
for memory, ~1 for throughput). Inputs are N distinct JPEG variants (crops, flips, JPEG qualities)
of the bundled sample photos, so every decoded image is real pixels of the samples' size
(~384 x 256, ~0.3 MB decoded) travelling through the object store. Each size runs on a fresh local
Ray (same worker start-up for both); with `--address` both run on the same cluster.

    python benchmarks/scale_memory.py --quick            # N=60 and 600, segmentation off, ~2 min
    python benchmarks/scale_memory.py --n 1000 --segmentation
    ray job submit -- python benchmarks/scale_memory.py --address auto --workdir s3://bucket/bench --n 100000
"""
from __future__ import annotations

import argparse
import shutil

from harness import MiB, Measured, format_stage_times, fresh_ray, measured_run, scratch_uri, tiny_config, write_variants


def run_sizes(sizes: list[int], workdir: str, segmentation: bool, address: str | None, side: int | None) -> dict[int, Measured]:
    """Write the largest input set once; each size scores its first n files (`input.limit`)."""
    inputs = write_variants(max(sizes), f"{workdir}/in", side)
    results = {}
    for n in sizes:
        overrides = [f"input.limit={n}"] + ([f"ray.address={address}"] if address else [])
        cfg = tiny_config(inputs, f"{workdir}/out-{n}", segmentation, overrides)
        try:
            results[n] = measured_run(cfg)
        finally:
            fresh_ray(cfg)
    return results


def report(results: dict[int, Measured]) -> str:
    """One column per size, then the ratios of the largest to the smallest size."""
    sizes = sorted(results)
    metrics = [
        ("driver RSS peak (MiB)", lambda m: m.peaks.driver_rss / MiB),
        ("workers RSS peak, summed (MiB)", lambda m: m.peaks.workers_rss / MiB),
        ("workers PSS peak, summed (MiB)", lambda m: m.peaks.workers_pss / MiB),
        ("object store peak in use (MiB)", lambda m: m.peaks.store_used / MiB),
        ("spilled during the run (MiB)", lambda m: m.peaks.spilled / MiB),
        ("restored from spill (MiB)", lambda m: m.peaks.restored / MiB),
        ("throughput, end to end (images/s)", lambda m: m.images_per_s),
    ]
    lines = [f"{'':<36}" + "".join(f"{f'N={n}':>12}" for n in sizes) + f"{'ratio':>10}"]
    for label, get in metrics:
        lo, hi = get(results[sizes[0]]), get(results[sizes[-1]])
        ratio = f"{hi / lo:10.2f}" if lo > 0 else f"{'n/a':>10}"
        lines.append(f"{label:<36}" + "".join(f"{get(results[n]):12.1f}" for n in sizes) + ratio)
    small, big = results[sizes[0]].summary, results[sizes[-1]].summary
    marginal = (big.new_rows - small.new_rows) / (big.seconds - small.seconds) if big.seconds > small.seconds else float("nan")
    lines += [
        f"{'rows written':<36}" + "".join(f"{results[n].summary.new_rows:12d}" for n in sizes),
        f"{'output Parquet bytes per row':<36}"
        + "".join(f"{results[n].output_bytes / max(1, results[n].summary.new_rows):12.0f}" for n in sizes),
        f"{'checkpoint bytes per row':<36}"
        + "".join(f"{results[n].checkpoint_bytes / max(1, results[n].summary.new_rows):12.0f}" for n in sizes),
        f"{'workers seen (max)':<36}" + "".join(f"{results[n].peaks.workers:12d}" for n in sizes),
        f"{'memory samples':<36}" + "".join(f"{results[n].peaks.samples:12d}" for n in sizes),
        "",
        f"marginal throughput (extra images / extra seconds) = {marginal:.2f} images/s; the end-to-end ratio",
        "includes the fixed start-up (Ray workers, model load), which the larger run amortises.",
        "",
        f"where the time went at N={sizes[-1]} (Ray Data per-operator task time):",
        format_stage_times(results[sizes[-1]].stats),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=60 (and 600), segmentation off")
    ap.add_argument("--n", type=int, default=1000, help="the small size N; the large one is 10*N")
    ap.add_argument("--segmentation", action="store_true", help="run SAM2 (tiny, 256 px) too; slow on CPU")
    ap.add_argument("--side", type=int, default=None, help="resize variants to this long side (default: the samples' ~384)")
    ap.add_argument("--address", default=None, help="a running cluster (e.g. auto under `ray job submit`)")
    ap.add_argument("--workdir", default=None, help="inputs + outputs folder all nodes can read (s3://...); default a local temp dir")
    args = ap.parse_args(argv)
    n = 60 if args.quick else args.n
    workdir, local = scratch_uri(args.workdir, "rayiqa-scale-memory-")
    try:
        results = run_sizes([n, 10 * n], workdir, args.segmentation, args.address, args.side)
    finally:
        if local:
            shutil.rmtree(local, ignore_errors=True)
    print(f"\nscale_memory: tiny presets, segmentation {'on' if args.segmentation else 'off'}, "
          f"{'cluster ' + args.address if args.address else 'local Ray'}")
    print(report(results))


if __name__ == "__main__":
    main()
