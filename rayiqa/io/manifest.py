"""The end-of-run summary and the run manifest written next to the output Parquet."""
from __future__ import annotations

import json
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata

import pyarrow.dataset as pads
from pyarrow import fs as pafs

MANIFEST = "_manifest.json"
PACKAGES = ("rayiqa", "ray", "torch", "transformers", "sam2", "open_clip_torch", "pyarrow", "vllm")


@dataclass(frozen=True)
class RunSummary:
    rows: int  # rows in the output (all runs into it)
    unique_paths: int
    scored: int
    errors: dict[str, int] = field(default_factory=dict)
    inputs: int = 0  # inputs listed by this run
    new_rows: int = 0  # rows this run wrote
    seconds: float = 0.0
    uri: str = ""

    def with_run(self, **kw) -> "RunSummary":
        return replace(self, **kw)

    @property
    def images_per_second(self) -> float:
        return self.new_rows / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return "\n".join(
            [
                "rayiqa score — summary",
                f"  inputs listed      {self.inputs}",
                f"  rows in output     {self.rows} ({self.unique_paths} unique paths)",
                f"  scored this run    {self.new_rows} in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)",
                f"  scored (all runs)  {self.scored}",
                f"  errors             {sum(self.errors.values())} ({errs})",
                f"  output             {self.uri}",
            ]
        )


def summarise_output(fs: pafs.FileSystem, root: str) -> RunSummary:
    """Count rows, unique paths, scores and errors by kind in an output folder (empty if absent)."""
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return RunSummary(0, 0, 0)
    ds = pads.dataset(root, filesystem=fs, format="parquet")  # skips _-prefixed files and folders
    if not ds.files:
        return RunSummary(0, 0, 0)
    table = ds.to_table(columns=["path", "error_kind"])
    kinds = Counter(k for k in table.column("error_kind").to_pylist() if k is not None)
    return RunSummary(
        rows=table.num_rows,
        unique_paths=len(set(table.column("path").to_pylist())),
        scored=table.num_rows - sum(kinds.values()),
        errors=dict(kinds),
    )


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_manifest(fs: pafs.FileSystem, root: str, cfg, provenance: dict, weights: str, summary: RunSummary) -> str:
    """Write `_manifest.json` (config, models and weight sources, versions, counts) into the output; `weights`
    says what the scoring models are: random-init | rayiqa-trained (synthetic) | pretrained | trained checkpoint."""
    doc = {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.model_dump(mode="json"),
        "models": provenance,
        "weights": weights,
        "versions": _versions(),
        "summary": asdict(summary) | {"images_per_second": summary.images_per_second},
    }
    path = f"{root.rstrip('/')}/{MANIFEST}"
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(doc, indent=2).encode())
    return path
