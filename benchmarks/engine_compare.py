"""vLLM against transformers as the scoring job's engine: the same model, images and stage, one run.

Needs vLLM: `.venv-vllm/bin/python benchmarks/engine_compare.py` (its CPU build, tiny model), or on a GPU
machine with the `vllm` extra: `python benchmarks/engine_compare.py --gpu --preset Qwen/Qwen2.5-VL-7B-Instruct`.

For each engine it measures
1. the job end to end (`run_score` on a local Ray, one score actor, whole image or with SAM2 crops):
   images/s from the first read to the last write, engine start-up included;
2. the score stage in this process on the same decoded blocks (what one actor does per block, after a
   warm-up block): images/s, the share of the stage's time outside the engine call (cutting crops,
   turning probabilities into the row's columns) and outside the model itself (that, plus rendering
   prompts and preprocessing images: the HF processor for transformers, rayiqa's request building for
   vLLM, whose own processor runs inside `LLM.generate`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import tiny_config, write_variants  # noqa: E402

from rayiqa.pipeline import stages  # noqa: E402
from rayiqa.pipeline.score_job import run_score  # noqa: E402


def mllm_override(engine: str, preset: str, gpu: bool) -> str:
    if gpu:
        return f"mllms=[{{preset: {preset}, engine: {engine}, batch_size: 16}}]"
    return (f"mllms=[{{preset: {preset}, engine: {engine}, dtype: float32, max_pixels: 12544, batch_size: 16, "
            "max_model_len: 2048, kv_cache_memory_bytes: 268435456, enforce_eager: true}]")


def decoded_blocks(cfg, block: int) -> list[dict]:
    """The inputs decoded (and segmented when the config asks) into blocks as the job hands them over."""
    from rayiqa.io.sources import list_inputs

    uris = list_inputs(cfg.input)
    blocks = [stages.decode_batch({"path": np.asarray(uris[i : i + block], dtype=object)}, cfg.input)
              for i in range(0, len(uris), block)]
    if cfg.method.segmentation:
        segment = stages.SegmentStage(cfg.segmenter, cfg.method)
        blocks = [segment(b) for b in blocks]
    return blocks


def _timed(owner: object, name: str, clock: dict, key: str) -> None:
    """Wrap `owner.name` so that its calls add their seconds to clock[key]."""
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            clock[key] += time.perf_counter() - t

    setattr(owner, name, timed)


def stage_split(cfg, blocks: list[dict]) -> dict[str, float]:
    """Seconds in ScoreStage calls, in its engine's level_probs and in the model (vLLM's generate, the
    transformers forward) over the blocks; the first block warms up."""
    stage = stages.ScoreStage(cfg.mllms[0], cfg.method, 0)
    clock = {"engine": 0.0, "model": 0.0}
    _timed(stage.engine, "level_probs", clock, "engine")
    _timed(*((stage.engine.llm, "generate") if hasattr(stage.engine, "llm") else (stage.engine.model, "forward")),
           clock, "model")
    stage({k: v.copy() for k, v in blocks[0].items()})  # warm-up: first forward, caches
    clock.update(engine=0.0, model=0.0)
    start = time.perf_counter()
    for b in blocks[1:]:
        stage({k: v.copy() for k, v in b.items()})
    total = time.perf_counter() - start
    images = sum(len(b["path"]) for b in blocks[1:])
    requests = sum(1 + len(boxes) for b in blocks[1:] for boxes in b["boxes"])
    return {"images/s": images / total, "requests": requests,
            "outside engine": (total - clock["engine"]) / total, "outside model": (total - clock["model"]) / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=48, help="images (distinct JPEG variants of the samples)")
    ap.add_argument("--crops", action="store_true", help="segment with SAM2 and score the crops too")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--gpu", action="store_true", help="one GPU per score actor and the engines' GPU defaults")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_variants(args.n, f"{tmp}/in")
        rows = []
        for engine in ("transformers", "vllm"):
            overrides = [mllm_override(engine, args.preset, args.gpu), "score.num_cpus=1", "decode.num_cpus=1"]
            overrides += ["score.num_gpus=1"] if args.gpu else []
            cfg = tiny_config(folder, f"{tmp}/out-{engine}", args.crops, overrides)
            summary = run_score(cfg)
            split = stage_split(cfg, decoded_blocks(cfg, cfg.score.batch_size))
            rows.append((engine, args.n / summary.seconds, split))
    print(f"\n{args.n} images, {'whole image + SAM2 crops' if args.crops else 'whole image'}, preset {args.preset}, "
          f"{'GPU' if args.gpu else 'CPU'}\n")
    print("| engine | job images/s | stage images/s | requests | stage time outside the engine call | outside the model |")
    print("|---|---|---|---|---|---|")
    for engine, job_rate, split in rows:
        print(f"| {engine} | {job_rate:.2f} | {split['images/s']:.2f} | {split['requests']} "
              f"| {split['outside engine']:.1%} | {split['outside model']:.1%} |")
    (_, t_job, t_split), (_, v_job, v_split) = rows
    print(f"\nvllm / transformers: job {v_job / t_job:.2f}, stage {v_split['images/s'] / t_split['images/s']:.2f}")


if __name__ == "__main__":
    main()
