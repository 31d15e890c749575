"""Peak memory and time of `rayiqa report` on a synthetic score output of 1 M rows.

The output has the job's schema (rayiqa.pipeline.stages.OUTPUT_SCHEMA) and a run's shape: 8
Parquet parts, a 2-model ensemble, 1-5 crops per image, 7 levels, TTA columns in batches of 8 and
1 % error rows. The paths name no real files, so the 2N thumbnails are placeholders: what is
measured is reading the output. Each measurement runs in a fresh process and reads its own peak
RSS from /proc/self/status (VmHWM; ru_maxrss would carry the parent's peak across fork + exec):
  floor   Python with the report's imports, nothing read
  report  `rayiqa report OUTPUT --out DIR` (scan, figures, thumbnails, HTML)
  pandas  for contrast: the whole output read into pandas, as a notebook would
Run: .venv/bin/python benchmarks/report_memory.py [--rows 1000000] [--dir /tmp/report-bench] [--no-pandas]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PARTS = 8
MODELS = ("tiny", "tiny-b")
LEVELS = 7
ERROR_KINDS = ("truncated", "not_an_image", "empty", "too_large")


def _lists(values: pa.Array, lengths: np.ndarray, type_: pa.DataType | None = None) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=type_)


def synthetic_part(start: int, rows: int, seed: int) -> pa.Table:
    """`rows` output rows with the job's schema; ~1 % error rows with empty lists, as the job writes them."""
    from rayiqa.pipeline.stages import OUTPUT_SCHEMA

    rng = np.random.default_rng(seed)
    m = len(MODELS)
    ok = rng.random(rows) >= 0.01
    crops = np.where(ok, rng.integers(1, 6, rows), 0)
    n_crops, n_ok = int(crops.sum()), int(ok.sum())
    models = np.where(ok, m, 0)
    global_probs = rng.dirichlet(np.ones(LEVELS), n_ok * m).ravel()
    crop_probs = rng.dirichlet(np.ones(LEVELS), n_crops * m).ravel()
    levels = np.arange(1, LEVELS + 1)
    crop_scores = crop_probs.reshape(-1, LEVELS) @ levels
    model_scores = rng.normal(8.0, 1.5, n_ok * m)
    score = np.full(rows, np.nan)
    score[ok] = model_scores.reshape(-1, m).mean(axis=1)
    per_model_crops = np.repeat(crops[ok], m)  # [row][model] -> that row's crop count
    x0 = rng.integers(0, 400, n_crops)
    y0 = rng.integers(0, 300, n_crops)
    boxes = np.stack([x0, y0, x0 + rng.integers(20, 400, n_crops), y0 + rng.integers(20, 300, n_crops)], 1)
    kinds = np.array(ERROR_KINDS, dtype=object)[rng.integers(0, len(ERROR_KINDS), rows)]
    batch = (start + np.arange(rows)) // 8
    cluster = np.array(["high", "high", None, None, None, None, "low", "low"], dtype=object)[np.arange(rows) % 8]
    base = rng.normal(0.5, 0.1, rows)

    def nullable(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=~ok)

    cols = {
        "path": pa.array([f"/nonexistent/images/{i:08d}.jpg" for i in range(start, start + rows)]),
        "score": pa.array(score, mask=~ok),
        "error_kind": pa.array(kinds, mask=ok),
        "error": pa.array(np.array([f"{k}: synthetic error row" for k in kinds], dtype=object), mask=ok),
        "width": pa.array(rng.integers(400, 1024, rows).astype(np.int32)),
        "height": pa.array(rng.integers(300, 768, rows).astype(np.int32)),
        "global_score": nullable(np.where(ok, score / 2, 0.0)),
        "local_score": nullable(np.where(ok, score / 2 + rng.normal(0, 0.3, rows), 0.0)),
        "crop_boxes": _lists(pa.FixedSizeListArray.from_arrays(pa.array(boxes.ravel().astype(np.int32)), 4), crops),
        "crop_areas": _lists(pa.array(rng.integers(400, 100_000, n_crops)), crops),
        "crop_weights": _lists(pa.array(rng.random(n_crops)), crops),
        "model_ids": _lists(pa.array(np.tile(MODELS, n_ok)), models),
        "model_scores": _lists(pa.array(model_scores), models),
        "global_probs": _lists(_lists(pa.array(global_probs), np.full(n_ok * m, LEVELS)), models),
        "crop_scores": _lists(_lists(pa.array(crop_scores), per_model_crops), models),
        "crop_probs": _lists(_lists(_lists(pa.array(crop_probs), np.full(n_crops * m, LEVELS)), per_model_crops), models),
        "tta_score": nullable(base + rng.normal(0, 0.05, rows)),
        "tta_base_score": nullable(base),
        "tta_ranker_score": nullable(score),
        "tta_cluster": nullable(cluster),
        "tta_batch": nullable(np.array([f"batch-{b:07d}" for b in batch], dtype=object)),
        "tta_method": nullable(np.full(rows, "llm-tta", dtype=object)),
        "tta_final_loss": nullable(rng.random(rows)),
        "tta_note": pa.nulls(rows, pa.string()),
    }
    return pa.Table.from_pydict({f.name: cols[f.name].cast(f.type) for f in OUTPUT_SCHEMA}, schema=OUTPUT_SCHEMA)


def build_output(folder: Path, rows: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-rows // PARTS)
    for part in range(PARTS):
        start = part * per
        pq.write_table(synthetic_part(start, min(per, rows - start), seed=part), folder / f"part-{part:02d}.parquet")


def measure(what: str, output: str, out: str) -> None:
    """Run one measurement in this process and print {seconds, peak_rss_mb} as JSON."""
    started = time.perf_counter()
    if what == "floor":
        import matplotlib.figure  # noqa: F401  the report's imports, nothing read

        import rayiqa.report  # noqa: F401
    elif what == "report":
        from rayiqa.cli import main

        assert main(["report", output, "--out", out]) == 0
    else:
        import pyarrow.dataset as pads

        pads.dataset(output, format="parquet").to_table().to_pandas()
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/rayiqa-report-bench")
    ap.add_argument("--no-pandas", action="store_true", help="skip the whole-table pandas read")
    ap.add_argument("--measure", choices=["floor", "report", "pandas"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    output, out = f"{args.dir}/output", f"{args.dir}/report"
    if args.measure:
        measure(args.measure, output, out)
        return
    started = time.perf_counter()
    build_output(Path(output), args.rows)
    size = sum(p.stat().st_size for p in Path(output).glob("*.parquet")) / 2**20
    print(f"synthetic output: {args.rows} rows, {PARTS} parts, {size:.0f} MiB on disk, built in {time.perf_counter() - started:.0f} s")
    results = {}
    for what in ["floor", "report"] + ([] if args.no_pandas else ["pandas"]):
        proc = subprocess.run([sys.executable, __file__, "--dir", args.dir, "--measure", what],
                              capture_output=True, text=True, check=True, env=os.environ)
        results[what] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'':8} {'peak RSS MiB':>12} {'seconds':>8}")
    for what, r in results.items():
        print(f"{what:8} {r['peak_rss_mb']:12.0f} {r['seconds']:8.1f}")
    print(f"report - floor: {results['report']['peak_rss_mb'] - results['floor']['peak_rss_mb']:.0f} MiB for {args.rows} rows")
    if "pandas" in results:
        print(f"pandas / report peak RSS: {results['pandas']['peak_rss_mb'] / results['report']['peak_rss_mb']:.1f}")


if __name__ == "__main__":
    main()
