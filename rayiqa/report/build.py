"""Build a score run's report: read the output, draw, and write report.html + its PNGs (local or s3://)."""
from __future__ import annotations

import json

from pyarrow import fs as pafs

from rayiqa.config import InputConfig, StorageConfig
from rayiqa.io.fs import join_uri, resolve_fs, split_uri
from rayiqa.io.manifest import MANIFEST
from rayiqa.report import figures
from rayiqa.report.page import Shown, render
from rayiqa.report.scan import open_output, scan_output
from rayiqa.report.thumbs import ImageReader, evidence_thumbnail

REPORT_DIR = "_report"  # inside the output; `_`-prefixed, so Parquet readers of the output skip it
MAX_SHOWN = 24  # per list: at most 48 inputs are read for thumbnails


def _read_manifest(fs: pafs.FileSystem, root: str) -> dict | None:
    path = f"{root.rstrip('/')}/{MANIFEST}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def _figures(data, agreement, mos_column: str) -> dict[str, bytes]:
    """{figure name: PNG} for what the run has: histogram, global/local, TTA, MOS."""
    out = {}
    if data.hists:
        out["histogram"] = figures.score_histogram(data.hists, data.model_ids)
    if data.local.seen:
        out["global_local"] = figures.scatter(data.local, "global", "local", "global score (whole image)",
                                              "local score (area-weighted crops)", "Global vs local score")
    if data.tta.seen:
        out["tta_scatter"] = figures.scatter(data.tta, "base", "adapted", "base score (source backbone)",
                                             "adapted score", "Test-time adaptation: base vs adapted")
        out["tta_batches"] = figures.tta_batches(data.tta_batches)
    if agreement is not None:
        out["mos"] = figures.mos_scatter(agreement.pred, agreement.mos, agreement.metrics, mos_column)
    return out


def write_report(output_uri: str, out_uri: str | None = None, n: int = 8, agreement=None, mos_column: str = "mos") -> str:
    """Write the report of the run in `output_uri` to `out_uri` (default: OUTPUT_URI/_report) and
    return report.html's URI. `agreement`: the `rayiqa.evaluate.evaluate_files` result to show, or None.
    S3 options come from the AWS environment, as for `rayiqa eval scores`."""
    if not 1 <= n <= MAX_SHOWN:
        raise ValueError(f"n={n}: show between 1 and {MAX_SHOWN} images per list")
    storage = StorageConfig()
    fs, root = resolve_fs(output_uri, storage)
    data = scan_output(open_output(fs, root), n)
    manifest = _read_manifest(fs, root)
    input_cfg = InputConfig.model_validate(manifest["config"]["input"]) if manifest else InputConfig()
    read = ImageReader(input_cfg)

    figs = _figures(data, agreement, mos_column)
    figure_files = {name: f"img/{name}.png" for name in figs}
    files = {figure_files[name]: png for name, png in figs.items()}
    shown: dict[str, list[Shown]] = {}
    for name, rows in data.extremes.items():
        shown[name] = []
        for rank, row in enumerate(rows, 1):
            png, problem = evidence_thumbnail(row, read)
            files[f"img/{name}_{rank:02d}.png"] = png
            shown[name].append(Shown(row, f"img/{name}_{rank:02d}.png", problem))
    page = render(output_uri, manifest, data, figure_files, shown, agreement, mos_column)

    out_fs, out_root = resolve_fs(out_uri or f"{output_uri.rstrip('/')}/{REPORT_DIR}", storage)
    out_fs.create_dir(f"{out_root}/img", recursive=True)
    for name, content in [*files.items(), ("report.html", page.encode())]:
        with out_fs.open_output_stream(f"{out_root}/{name}") as f:
            f.write(content)
    return join_uri(split_uri(out_uri or output_uri)[0], f"{out_root}/report.html")
