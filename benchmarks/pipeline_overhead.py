"""Ray Data scoring job vs a plain Python loop over the same tiny models and images, in one run.

Prints images/s of both and their ratio. The loop calls the very same stage code in one process
(decode -> segment -> score -> finalize), so the ratio is what Ray Data's streaming, actor pools
and Parquet writing cost or gain. `--quick` uses 8 images; the default 24.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _images(n: int, dst: Path) -> list[str]:
    from rayiqa.io.samples import samples_dir

    src = sorted(p for p in samples_dir().iterdir() if p.suffix.lower() in (".jpg", ".png"))
    dst.mkdir(parents=True)
    out = []
    for i in range(n):
        p = dst / f"{i:05d}{src[i % len(src)].suffix}"
        shutil.copy(src[i % len(src)], p)
        out.append(str(p))
    return out


def plain_loop(cfg, paths: list[str]) -> float:
    """Seconds for the same stages called in a loop, one process, no Ray."""
    import numpy as np

    from rayiqa.pipeline import stages

    t = time.perf_counter()
    seg = stages.SegmentStage(cfg.segmenter, cfg.method) if cfg.method.segmentation else None
    scorers = [stages.ScoreStage(m, cfg.method, k) for k, m in enumerate(cfg.mllms)]
    tables = []
    for i in range(0, len(paths), cfg.score.batch_size):
        batch = stages.decode_batch({"path": np.asarray(paths[i : i + cfg.score.batch_size], dtype=object)}, cfg.input)
        if seg is not None:
            batch = seg(batch)
        for s in scorers:
            batch = s(batch)
        tables.append(stages.finalize(batch, [m.preset for m in cfg.mllms], cfg.method))
    pq.write_table(pa.concat_tables(tables), Path(cfg.output.uri) / "loop.parquet")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=None)
    args = ap.parse_args()
    n = args.n or (8 if args.quick else 24)

    import ray

    from rayiqa.config import ScoreConfig, load_config
    from rayiqa.pipeline.runtime import model_provenance
    from rayiqa.pipeline.score_job import run_score

    work = Path(tempfile.mkdtemp(prefix="rayiqa-bench-"))
    paths = _images(n, work / "in")
    common = [
        f"input.uri={work / 'in'}",
        "segmenter.image_size=256",
        "segmenter.points_per_side=8",
        "mllms=[{preset: tiny, max_pixels: 50176}]",
        "score.batch_size=4",
        "segment.batch_size=2",
    ]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = load_config(ScoreConfig, None, [*common, f"output.uri={work / 'ray'}"])
    model_provenance(cfg)  # build the tiny checkpoints before timing either side
    summary = run_score(cfg)
    ray_s = summary.seconds
    loop_cfg = load_config(ScoreConfig, None, [*common, f"output.uri={work / 'loop'}"])
    (work / "loop").mkdir()
    loop_s = plain_loop(loop_cfg, paths)
    print(f"images: {n} (tiny presets, CPU, 2 Ray CPUs)")
    print(f"ray data job : {ray_s:7.2f} s  {n / ray_s:6.2f} images/s (incl. actor start-up and Parquet write)")
    print(f"plain loop   : {loop_s:7.2f} s  {n / loop_s:6.2f} images/s (incl. model load)")
    print(f"throughput ratio ray/loop = {loop_s / ray_s:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
