"""`rayiqa score`: the scoring job as one streaming Ray Data pipeline.

read input list -> decode (tasks) -> segment (SAM2 actor pool) -> score (one actor pool per MLLM,
transformers or vLLM in the actor) -> finalize -> write Parquet; with another registered scorer
(`scorer: promptiqa | grmp | ...`) one actor pool scores whole images instead of segment + MLLMs.
Ray Data's checkpointing (id column `path`) makes a re-run into the same output resume: inputs
already written are filtered out at the read and none is written twice.
"""
from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rayiqa.config import ScoreConfig, StageConfig
from rayiqa.config.score import LLM_IQA
from rayiqa.io.errors import OutputError
from rayiqa.io.fs import join_path, resolve_fs
from rayiqa.io.manifest import RunSummary, summarise_output, write_manifest
from rayiqa.io.sources import list_inputs
from rayiqa.pipeline import stages
from rayiqa.pipeline.runtime import model_provenance, storage_error
from rayiqa.pipeline.trained_scorer import TrainedScoreStage
from rayiqa.runtime import configure_io_retries, ensure_ray, read_retry_args

log = logging.getLogger(__name__)

INPUTS_DIR = "_inputs"  # leading underscore: ignored by pyarrow / Ray Data readers of the output
CHECKPOINT_DIR = "_checkpoint"


@dataclass(frozen=True)
class Layout:
    """Where one run keeps its files, relative to the output folder on its filesystem."""

    fs: object
    root: str

    @property
    def inputs(self) -> str:
        return join_path(self.root, INPUTS_DIR)

    @property
    def checkpoint(self) -> str:
        return join_path(self.root, CHECKPOINT_DIR)


def _actor_args(stage: StageConfig) -> dict:
    import ray.data

    lo, hi = stage.concurrency
    return dict(
        compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
        batch_size=stage.batch_size,
        num_cpus=stage.num_cpus,
        num_gpus=stage.num_gpus,
        batch_format="numpy",
        zero_copy_batch=False,
        max_task_retries=stage.max_task_retries,
    )


def _output_error(exc: OSError, cfg: ScoreConfig) -> OutputError:
    """What is wrong with output.uri, in one line: not a folder, not writable, or not reachable."""
    text = str(exc)
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, (NotADirectoryError, FileExistsError)) or "Not a directory" in text:
        what = "is not a folder (it, or a folder above it, is a file)"
    elif isinstance(exc, PermissionError) or re.search(r"ACCESS_DENIED|Read-only file system|HTTP status 403", text):
        what = "is not writable"
    else:
        what = f"is not reachable (output.storage; retry_attempts={cfg.output.storage.retry_attempts})"
    return OutputError(f"output.uri={cfg.output.uri!r} {what}: {type(exc).__name__}: {first}")


def _rewrite_without(fs, path: str, drop) -> int:
    """Rewrite one Parquet file without the rows where `drop(table)` is true (deleted when none is left;
    written beside it under a `_` name, then moved over it); returns the rows dropped."""
    import pyarrow.compute as pc

    table = pq.read_table(path, filesystem=fs)
    mask = drop(table)
    dropped = pc.sum(mask).as_py() or 0
    if dropped == table.num_rows:
        fs.delete_file(path)
    elif dropped:
        folder, name = path.rsplit("/", 1)
        scratch = f"{folder}/_rewrite-{name}"
        pq.write_table(table.filter(pc.invert(mask)), scratch, filesystem=fs)
        fs.move(scratch, path)
    return dropped


def _drop_error_rows(layout: Layout) -> tuple[int, int]:
    """output.mode=retry-errors: drop the output's error rows, and the inputs that have no scored row from
    Ray Data's checkpoint, so that this run (a resume) scores them again and writes each once.

    The checkpoint goes first: a run stopped in between leaves error rows, which the next retry-errors
    run drops. Returns (error rows dropped, inputs to score again)."""
    import pyarrow.compute as pc
    from pyarrow import fs as pafs

    parts = sorted(_parts(layout))
    errored: set[str] = set()
    scored: set[str] = set()
    for part in parts:
        table = pq.read_table(part, columns=["path", "error_kind"], filesystem=layout.fs)
        for path, kind in zip(table.column("path").to_pylist(), table.column("error_kind").to_pylist()):
            (scored if kind is None else errored).add(path)
    again = pa.array(sorted(errored - scored), pa.string())
    selector = pafs.FileSelector(layout.checkpoint, allow_not_found=True)
    for info in layout.fs.get_file_info(selector):
        if info.path.endswith(".parquet") and not info.path.endswith(".pending.parquet"):  # committed ones
            _rewrite_without(layout.fs, info.path, lambda t: pc.is_in(t.column("path"), value_set=again))
    dropped = sum(_rewrite_without(layout.fs, part, lambda t: pc.is_valid(t.column("error_kind"))) for part in parts)
    log.info("output.mode=retry-errors: %d error rows dropped, %d inputs to score again", dropped, len(again))
    return dropped, len(again)


def _prepare_output(cfg: ScoreConfig, uris: list[str]) -> Layout:
    """Check output.uri, clear it when overwriting (drop its error rows for retry-errors) and write this
    run's input list (the pipeline's read). Raises OutputError naming what is wrong with the output."""
    from pyarrow import fs as pafs

    try:
        fs, root = resolve_fs(cfg.output.uri, cfg.output.storage)
    except ValueError as e:
        raise OutputError(f"output.uri={cfg.output.uri!r}: {e}") from e
    layout = Layout(fs, root)
    try:
        kind = fs.get_file_info(root).type
        if kind == pafs.FileType.File:
            raise NotADirectoryError(f"{root} is a file")
        if cfg.output.mode == "overwrite" and kind != pafs.FileType.NotFound:
            fs.delete_dir(root)
        fs.create_dir(layout.inputs, recursive=True)
        if cfg.output.mode == "retry-errors":
            _drop_error_rows(layout)
        table = pa.table({"path": pa.array(uris, pa.string())})
        pq.write_table(table, join_path(layout.inputs, "inputs.parquet"), filesystem=fs, row_group_size=1024)
    except OSError as e:
        raise _output_error(e, cfg) from e
    return layout


def _committed_rows(layout: Layout) -> int:
    """Inputs whose output part is committed (Ray Data renames `<id>.pending.parquet` once it is written)."""
    from pyarrow import fs as pafs

    infos = layout.fs.get_file_info(pafs.FileSelector(layout.checkpoint, allow_not_found=True))
    done = [i.path for i in infos if i.path.endswith(".parquet") and not i.path.endswith(".pending.parquet")]
    return sum(pq.read_metadata(p, filesystem=layout.fs).num_rows for p in done)


def build_pipeline(cfg: ScoreConfig, layout: Layout, model_ids: list[str]):
    """The lazy Ray Data pipeline from the input list to the Parquet write (not executed)."""
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    ctx = ray.data.DataContext.get_current()
    ctx.checkpoint_config = CheckpointConfig(
        id_column="path",
        checkpoint_path=layout.checkpoint,
        delete_checkpoint_on_success=False,  # a finished run re-run scores nothing
        override_filesystem=layout.fs,
    )
    # The input list is one driver-written file: Ray Data's V2 Parquet reader starts footer-reader actors
    # (new processes, seconds) on every read to index it; the V1 read task reads it in one go.
    ctx.use_datasource_v2 = False
    # A block whose model raised (device error, OOM; inputs it refuses are error rows) is re-run, up
    # to each stage's max_task_retries, like a block whose actor died.
    ctx.actor_task_retry_on_errors = True
    ds = ray.data.read_parquet(layout.inputs, filesystem=layout.fs)
    ds = ds.repartition(target_num_rows_per_block=cfg.decode.batch_size)
    ds = ds.map_batches(
        stages.decode_batch,
        fn_kwargs={"input_cfg": cfg.input},
        batch_size=cfg.decode.batch_size,
        num_cpus=cfg.decode.num_cpus,
        batch_format="numpy",
        **read_retry_args(),  # the input store down past the SDK's retries: Ray runs the task again
    )
    if cfg.scorer != LLM_IQA:  # a trained single-score model: whole images, one actor pool
        ds = ds.map_batches(TrainedScoreStage, fn_constructor_args=(cfg,), **_actor_args(cfg.score))
        return ds.map_batches(stages.finalize, fn_kwargs={"model_ids": model_ids, "method": cfg.method}, batch_format="numpy")
    if cfg.method.segmentation:
        ds = ds.map_batches(
            stages.SegmentStage, fn_constructor_args=(cfg.segmenter, cfg.method), **_actor_args(cfg.segment)
        )
    for k, mllm in enumerate(cfg.mllms):
        last = k == len(cfg.mllms) - 1 and cfg.adapt.method == "none"  # else AdaptStage reads the pixels
        ds = ds.map_batches(stages.ScoreStage, fn_constructor_args=(mllm, cfg.method, k, last), **_actor_args(cfg.score))
    if cfg.adapt.method != "none":  # strict windows of rows; AdaptStage cuts them into batches of B good images
        from rayiqa.pipeline.adapt import AdaptStage, pack_rows  # torch: only for a job that adapts

        ds = ds.map_batches(pack_rows, batch_format="numpy")
        ds = ds.repartition(target_num_rows_per_block=cfg.adapt.stage.batch_size, strict=True)
        ds = ds.map_batches(AdaptStage, fn_constructor_args=(cfg.adapt, cfg.mllms, cfg.method), **_actor_args(cfg.adapt.stage))
    return ds.map_batches(stages.finalize, fn_kwargs={"model_ids": model_ids, "method": cfg.method}, batch_format="numpy")


def cpus_needed(cfg: ScoreConfig) -> float:
    """Logical CPUs the job holds at once: its actor pools at their max size, one decode task, one read
    task and Ray Data's checkpoint-filter actor (1 CPU, present when resuming)."""
    llm_iqa = cfg.scorer == LLM_IQA
    pools = [(cfg.score, len(cfg.mllms) if llm_iqa else 1)] + ([(cfg.segment, 1)] if llm_iqa and cfg.method.segmentation else [])
    pools += [(cfg.adapt.stage, 1)] if cfg.adapt.method != "none" else []
    return sum(st.num_cpus * st.concurrency[1] * n for st, n in pools) + cfg.decode.num_cpus + 1 + 1


def _parts(layout: Layout) -> set[str]:
    """The output's Parquet parts, listed without reading them: a killed run may leave a half-written
    part, which Ray Data's resume deletes (its checkpoint is still pending) before scoring its rows again."""
    from pyarrow import fs as pafs

    def visible(path: str) -> bool:  # as pyarrow's readers: `_`/`.`-prefixed files and folders are skipped
        return not any(p.startswith(("_", ".")) for p in path[len(layout.root) :].split("/"))

    infos = layout.fs.get_file_info(pafs.FileSelector(layout.root, recursive=True, allow_not_found=True))
    return {i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet") and visible(i.path)}


def _rows_in(layout: Layout, parts: set[str]) -> int:
    return pads.dataset(sorted(parts), filesystem=layout.fs, format="parquet").count_rows() if parts else 0


def run_score(cfg: ScoreConfig) -> RunSummary:
    """Run the scoring job end to end; returns (and writes into the manifest) the run's summary.

    The inputs are listed and the output checked before Ray or any model starts (InputError,
    OutputError). Raises StorageError (one clear message) when the input or output store stays down
    past its retry budget.
    """
    import ray.data

    uris = list_inputs(cfg.input)
    layout = _prepare_output(cfg, uris)
    ensure_ray(cfg.ray, cpus_needed(cfg))
    configure_io_retries()
    ctx = ray.data.DataContext.get_current()
    previous = ctx.checkpoint_config, ctx.use_datasource_v2, ctx.actor_task_retry_on_errors
    try:
        return _run_score(cfg, layout, len(uris))
    except Exception as exc:  # name the storage failure, not a Ray trace
        err = storage_error(exc, cfg)
        if err is None:
            raise
        raise err from exc
    finally:  # the DataContext is per process: later Ray Data jobs here must not inherit this run's settings
        ctx.checkpoint_config, ctx.use_datasource_v2, ctx.actor_task_retry_on_errors = previous


def _run_score(cfg: ScoreConfig, layout: Layout, n_inputs: int) -> RunSummary:
    started = time.time()
    if cfg.scorer == LLM_IQA:
        from rayiqa.models.mllm.presets import weights_summary

        provenance = model_provenance(cfg)
        model_ids = [m["model_id"] for m in provenance["mllms"]]
        weights = weights_summary({m["weights"] for m in provenance["mllms"]})
    else:
        model_ids = [cfg.scorer_config.model_id]
        weights = "trained checkpoint"
        provenance = {"scorer": {"model_id": model_ids[0], "weights": weights}}
    before = _parts(layout)
    ds = build_pipeline(cfg, layout, model_ids)
    ds.write_parquet(layout.root, filesystem=layout.fs)
    elapsed = time.time() - started
    summary = summarise_output(layout.fs, layout.root)
    summary = summary.with_run(inputs=n_inputs, new_rows=_rows_in(layout, _parts(layout) - before), seconds=elapsed, uri=cfg.output.uri)
    write_manifest(layout.fs, layout.root, cfg, provenance, weights, summary)
    return summary


def _interrupted(cfg: ScoreConfig) -> str:
    """The one line printed on Ctrl-C: what is written and how to go on."""
    try:
        fs, root = resolve_fs(cfg.output.uri, cfg.output.storage)
        written = f"{_committed_rows(Layout(fs, root))} rows are committed to {cfg.output.uri}"
    except (OSError, ValueError):
        written = f"the committed Parquet parts in {cfg.output.uri} are kept"
    again = "the same command with output.mode=resume" if cfg.output.mode == "overwrite" else "the same command again"
    return f"interrupted: {written}; run {again} to score the rest."


def main_score(config_path: str | None, overrides: list[str]) -> int:
    """`rayiqa score`: load the config, run, print the summary (Ctrl-C: one line, exit 130)."""
    from rayiqa.config import load_config

    cfg = load_config(ScoreConfig, config_path, overrides)
    try:
        summary = run_score(cfg)
    except KeyboardInterrupt:
        import ray

        ray.shutdown()  # ends the write tasks still in flight (all of a local Ray), so the count below is final
        print(_interrupted(cfg), file=sys.stderr)
        return 130
    print(summary.render())
    return 0
