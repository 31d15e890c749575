"""Where the trainers build their synthetic sets: at the dataset root, a local folder or object storage.

On a cluster the driver builds the set and the Ray Train workers (other nodes) read it, so the root
must be storage they all reach: an `s3://` root is built in a local temporary folder and uploaded
with pyarrow, and `s3://` pristine images are downloaded the same way first. A root that already
holds a set is used as it is (`ensure_synthetic_set`).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow.fs as pafs

from rayiqa.config import StorageConfig
from rayiqa.data.synthetic import ANNOTATION_FILE, make_synthetic_set
from rayiqa.io.fs import resolve_fs, split_uri
from rayiqa.io.samples import SAMPLES_URI, samples_dir

log = logging.getLogger(__name__)


def has_synthetic_set(root: str, storage: StorageConfig) -> bool:
    """Whether `root` (local or s3://) already holds a set's annotations file."""
    fs, path = resolve_fs(root, storage)
    return fs.get_file_info(f"{path.rstrip('/')}/{ANNOTATION_FILE}").type == pafs.FileType.File


def _pristine_folder(source: str, folder: Path, storage: StorageConfig) -> Path:
    """A local folder of the pristine images: `source` itself, the bundled PNG originals, or an s3:// copy."""
    if source == SAMPLES_URI:  # the bundled originals are the PNGs; the JPGs are distorted copies
        folder.mkdir(parents=True)
        for png in samples_dir().glob("*.png"):
            shutil.copyfile(png, folder / png.name)
        return folder
    if split_uri(source)[0] != "s3":
        return Path(source)
    fs, path = resolve_fs(source, storage)
    folder.mkdir(parents=True)
    pafs.copy_files(path, str(folder), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return folder


def build_synthetic_set(root: str, pristine: str, types: Sequence[str] | None, levels: int, seed: int,
                        storage: StorageConfig) -> None:
    """Write the synthetic set of `pristine` (folder, s3:// prefix or builtin:samples) at `root` (folder or s3://)."""
    scheme, path = split_uri(root)
    with tempfile.TemporaryDirectory() as tmp:
        source = _pristine_folder(pristine, Path(tmp) / "pristine", storage)
        if scheme != "s3":
            make_synthetic_set(source, path, types, levels, seed)
            return
        built = Path(tmp) / "set"
        make_synthetic_set(source, built, types, levels, seed)
        fs, path = resolve_fs(root, storage)
        pafs.copy_files(str(built), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def ensure_synthetic_set(root: str, pristine: str, types: Sequence[str] | None, levels: int, seed: int,
                         storage: StorageConfig) -> None:
    """Build the synthetic set at `root` (see `build_synthetic_set`) unless `root` already holds one."""
    if has_synthetic_set(root, storage):
        return
    log.info("making synthetic set %s from %s", root, pristine)
    build_synthetic_set(root, pristine, types, levels, seed, storage)
