"""Shared pieces of the scaling benchmarks: input variants, tiny-preset configs, one measured run.

`measured_run` runs the real scoring job (`rayiqa.pipeline.score_job.run_score`) on a local Ray it
starts (or the cluster at `ray.address`) while a thread samples the driver's RSS, the RSS/PSS of
every Ray worker process (through one zero-CPU sampler actor per node, which sums its raylet's
worker children) and the object store's bytes in use; Ray Data's own per-operator stats of the run
come back too (`DataContext.enable_stats_summary_collection`, `ray.data.list_stats_summaries`).
"""
from __future__ import annotations

import io
import math
import random
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rayiqa.config import ScoreConfig, load_config
from rayiqa.config.base import StorageConfig
from rayiqa.io.fs import join_path, resolve_fs
from rayiqa.io.manifest import RunSummary
from rayiqa.io.samples import samples_dir
from rayiqa.pipeline.score_job import CHECKPOINT_DIR, cpus_needed, run_score
from rayiqa.runtime import ensure_ray

MiB = 1024 * 1024
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # raylet children that are not workers


def write_variants(n: int, folder_uri: str, side: int | None = None, seed: int = 0) -> str:
    """Write n distinct JPEGs made from the bundled sample photos into `folder_uri` (local or s3://).

    Each variant is a random crop (70-100 % of each side) of a sample, flipped half the time,
    optionally resized so its long side is `side`, saved at a random JPEG quality 60-95: real
    files of real pixels whose decoded sizes match the samples' (about 384 x 256 unless `side`).
    """
    from PIL import Image, ImageOps

    fs, root = resolve_fs(folder_uri, StorageConfig())
    fs.create_dir(root, recursive=True)
    sources = [Image.open(p).convert("RGB") for p in sorted(samples_dir().glob("*")) if p.suffix in (".png", ".jpg")]
    rng = random.Random(seed)
    for i in range(n):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x0, y0 = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
        variant = image.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            variant = ImageOps.mirror(variant)
        if side:
            scale = side / max(variant.size)
            variant = variant.resize((round(variant.width * scale), round(variant.height * scale)), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        variant.save(buf, "JPEG", quality=rng.randint(60, 95))
        with fs.open_output_stream(join_path(root, f"{i:08d}.jpg")) as out:
            out.write(buf.getvalue())
    return folder_uri


def tiny_config(input_uri: str, output_uri: str, segmentation: bool, overrides: list[str] = ()) -> ScoreConfig:
    """The scoring job on tiny presets sized for CPU benchmarks: the MLLM sees at most 112 x 112 px
    (16 image tokens), SAM2 runs at 256 px with an 8 x 8 point grid; `overrides` come last."""
    base = [
        f"input.uri={input_uri}",
        f"output.uri={output_uri}",
        "output.mode=overwrite",
        "mllms=[{preset: tiny, max_pixels: 12544, batch_size: 16}]",
        f"method.segmentation={str(segmentation).lower()}",
        "segmenter.image_size=256",
        "segmenter.points_per_side=8",
        "score.batch_size=16",
        "segment.batch_size=2",
    ]
    return load_config(ScoreConfig, None, [*base, *overrides])


class _NodeSampler:
    """Runs on one node (zero CPUs): memory of the Ray worker processes of its own raylet."""

    def __init__(self) -> None:
        import psutil  # shipped inside ray (ray/thirdparty_files)

        self.me = psutil.Process()
        self.raylet = self.me.parent()

    def sample(self) -> tuple[int, int, int]:
        """(sum RSS, sum PSS, number of workers) over the raylet's `ray::` children but this one and the agents."""
        import psutil

        rss = pss = count = 0
        for proc in self.raylet.children():
            try:
                name = proc.name()
                if proc.pid == self.me.pid or not name.startswith("ray::") or name in AGENTS:
                    continue
                mem = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss, pss, count = rss + mem.rss, pss + mem.pss, count + 1
        return rss, pss, count


@dataclass
class Peaks:
    """Peaks seen by the sampler thread (bytes) and the cluster's spilling during the run."""

    driver_rss: int = 0
    workers_rss: int = 0
    workers_pss: int = 0
    workers: int = 0
    store_used: int = 0
    spilled: int = 0
    restored: int = 0
    samples: int = 0


@dataclass
class MemorySampler:
    """Samples memory every `interval` seconds on a thread while the `with` block runs."""

    interval: float = 0.5
    peaks: Peaks = field(default_factory=Peaks)

    def __enter__(self) -> "MemorySampler":
        import psutil
        import ray
        from ray import cloudpickle
        from ray._private import internal_api
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._state = internal_api.get_state_from_address(ray.get_runtime_context().gcs_address)
        self._store_reply = lambda: internal_api.get_memory_info_reply(self._state).store_stats
        start = self._store_reply()
        self._spilled0, self._restored0 = start.spilled_bytes_total, start.restored_bytes_total
        # by value: workers of a `ray job submit --working-dir` job cannot import this script's folder
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        actor = ray.remote(num_cpus=0)(_NodeSampler)
        self._actors = [
            actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in ray.nodes() if n["Alive"]
        ]
        self._driver = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import ray

        p = self.peaks
        p.driver_rss = max(p.driver_rss, self._driver.memory_info().rss)
        per_node = ray.get([a.sample.remote() for a in self._actors])
        rss, pss, count = (sum(v) for v in zip(*per_node))
        p.workers_rss, p.workers_pss, p.workers = max(p.workers_rss, rss), max(p.workers_pss, pss), max(p.workers, count)
        p.store_used = max(p.store_used, self._store_reply().object_store_bytes_used)
        p.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        self._sample()
        end = self._store_reply()
        self.peaks.spilled = end.spilled_bytes_total - self._spilled0
        self.peaks.restored = end.restored_bytes_total - self._restored0
        for actor in self._actors:
            ray.kill(actor)


def folder_bytes(uri: str, storage: StorageConfig, sub: str | None = None) -> int:
    """Bytes of the Parquet parts in an output folder (sub=None) or of everything under `sub` (e.g. _checkpoint)."""
    import pyarrow.fs as pafs

    fs, root = resolve_fs(uri, storage)
    base = join_path(root, sub) if sub else root
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=sub is not None, allow_not_found=True))
    return sum(i.size for i in infos if i.type == pafs.FileType.File and (sub or i.path.endswith(".parquet")))


@dataclass
class Measured:
    """One run of the scoring job: its summary, memory peaks, Ray Data's stats of the write, disk use."""

    summary: RunSummary
    peaks: Peaks
    stats: object  # ray.data._internal.stats.DatasetStatsSummary of the executed pipeline (None if not reported)
    output_bytes: int = 0  # Parquet parts
    checkpoint_bytes: int = 0  # Ray Data's checkpoint of finished ids

    @property
    def images_per_s(self) -> float:
        return self.summary.images_per_second


def start_ray(cfg: ScoreConfig, attempts: int = 3) -> None:
    """`ensure_ray` as `run_score` calls it, retried: on a loaded machine a local raylet can miss
    Ray's fixed 30 s registration window ("The current node timed out during startup")."""
    import ray

    for attempt in range(attempts):
        try:
            ensure_ray(cfg.ray, cpus_needed(cfg))
            return
        except Exception as exc:  # ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == attempts - 1:
                raise
            ray.shutdown()


def measured_run(cfg: ScoreConfig, sample_every: float = 0.5) -> Measured:
    """Run the scoring job once under the memory sampler, with Ray Data's stats collected.

    Starts Ray the way `run_score` would (`ensure_ray` with the job's CPU needs) so the sampler can
    start first; the caller shuts a local Ray down between runs (see `fresh_ray`)."""
    import ray.data

    start_ray(cfg)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_stats_summary_collection = True  # ray.data.list_stats_summaries() after the write
    ctx.per_stage_map_timing = True  # split fused operators (e.g. decode->segment) per stage
    before = len(ray.data.list_stats_summaries())
    with MemorySampler(sample_every) as sampler:
        summary = run_score(cfg)
    written = [s for s in ray.data.list_stats_summaries()[before:] if any("Write" in o.operator_name for o in s.operators_stats)]
    out, storage = cfg.output.uri, cfg.output.storage
    return Measured(summary, sampler.peaks, written[-1] if written else None,
                    folder_bytes(out, storage), folder_bytes(out, storage, CHECKPOINT_DIR))


def fresh_ray(cfg: ScoreConfig) -> None:
    """Shut a local Ray down so the next run starts with fresh worker processes (a cluster is kept)."""
    import ray

    if ray.is_initialized() and not cfg.ray.address:
        ray.shutdown()


def _operators(stats: object, seen: set[str]) -> list:
    """Every operator's stats of a dataset summary, upstream first: a summary holds its last
    operator and points to the summaries of the operators before it (`parents`)."""
    ops = [op for parent in stats.parents for op in _operators(parent, seen)]
    for op in stats.operators_stats:
        key = stats.dataset_uuid + op.operator_name
        if key not in seen:
            seen.add(key)
            ops.append(op)
    return ops


def stage_times(stats: object) -> list[tuple[str, float, float, int]]:
    """(stage, task wall seconds, task CPU seconds, output rows) per operator, fused operators split
    into their stages by Ray Data's per-stage timing (CPU seconds then shared out in proportion)."""
    rows = []
    for op in _operators(stats, set()):
        wall = op.wall_time.sum if op.wall_time else 0.0
        cpu = op.cpu_time.sum if op.cpu_time else 0.0
        out = int(op.output_num_rows.sum) if op.output_num_rows else 0
        names = op.operator_name.split("->")
        parts = [s.sum for s in op.stage_time] if op.stage_time and len(op.stage_time) == len(names) else None
        if parts is None or sum(parts) <= 0:
            rows.append((op.operator_name, wall, cpu, out))
            continue
        total = sum(parts)
        rows += [(name, wall * t / total, cpu * t / total, out) for name, t in zip(names, parts)]
    return rows


def format_stage_times(stats: object) -> str:
    """Where the time went: one line per stage, its share of the summed task time."""
    if stats is None:
        return "  (Ray Data reported no stats for this run)"
    rows = stage_times(stats)
    total = sum(r[1] for r in rows) or math.inf
    lines = [f"  {'stage':<44} {'task s':>8} {'cpu s':>8} {'share':>6} {'rows':>7}"]
    lines += [f"  {name[:44]:<44} {wall:8.2f} {cpu:8.2f} {100 * wall / total:5.1f}% {out:7d}" for name, wall, cpu, out in rows]
    lines.append(f"  dataset wall time {stats.time_total_s:.2f} s; spilled by this dataset {stats.dataset_bytes_spilled / MiB:.1f} MiB")
    return "\n".join(lines)


def scratch_uri(workdir: str | None, prefix: str) -> tuple[str, Path | None]:
    """A working folder URI: `workdir` (e.g. s3://bucket/bench, shared by a cluster's nodes) or a new
    local temp folder (returned as a Path too, so the caller can delete it)."""
    import tempfile

    if workdir:
        return workdir.rstrip("/"), None
    local = Path(tempfile.mkdtemp(prefix=prefix))
    return str(local), local
