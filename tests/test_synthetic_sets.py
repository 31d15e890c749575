"""The trainers build their synthetic sets where Ray Train workers on other nodes can read them: an
s3:// root (a moto server here) gets the whole set, and the rows read back point into the bucket."""
from __future__ import annotations

from pathlib import Path

import botocore.session
import pytest
from moto.server import ThreadedMotoServer

from rayiqa.config import StorageConfig
from rayiqa.config.grmp import GRMPDataConfig
from rayiqa.config.promptiqa import PromptIQATrainConfig
from rayiqa.data import load_dataset
from rayiqa.io.fs import resolve_fs
from rayiqa.train.grmp import load_rows
from rayiqa.train.promptiqa import prepare_synthetic
from rayiqa.train.synthetic_sets import build_synthetic_set, has_synthetic_set

BUCKET = "iqa"


@pytest.fixture
def s3_storage():
    """A moto S3 server with one empty bucket; the StorageConfig that reaches it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    storage = StorageConfig(endpoint_url=f"http://{host}:{port}", key="k", secret="s", region="us-east-1")
    botocore.session.get_session().create_client(
        "s3", endpoint_url=storage.endpoint_url, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    ).create_bucket(Bucket=BUCKET)
    yield storage
    server.stop()


def test_set_built_on_object_storage_reads_back_from_it(s3_storage, pristine, tmp_path):
    root = f"s3://{BUCKET}/synthetic"
    assert not has_synthetic_set(root, s3_storage)
    build_synthetic_set(root, str(pristine), ["jpeg", "contrast"], 2, 0, s3_storage)
    assert has_synthetic_set(root, s3_storage)
    rows = load_dataset("synthetic", root, s3_storage)
    refs = sorted(p.stem for p in Path(pristine).glob("*.png"))
    assert len(rows) == len(refs) * 2 * 2
    assert all(r.image.startswith(f"{root}/distorted/") for r in rows)
    fs, path = resolve_fs(rows[0].image, s3_storage)
    assert fs.get_file_info(path).size > 0  # the image itself is in the bucket, not only its annotation

    # the same set built locally from a pristine folder on object storage has the same labels
    fs, _ = resolve_fs(root, s3_storage)
    for png in Path(pristine).glob("*.png"):
        with fs.open_output_stream(f"{BUCKET}/pristine/{png.name}") as out:
            out.write(png.read_bytes())
    build_synthetic_set(str(tmp_path / "local"), f"s3://{BUCKET}/pristine", ["jpeg", "contrast"], 2, 0, s3_storage)
    local = load_dataset("synthetic", str(tmp_path / "local"))
    assert [(Path(r.image).name, r.score) for r in local] == [(Path(r.image).name, r.score) for r in rows]


def test_trainers_build_their_sets_on_an_s3_root(s3_storage, pristine):
    grmp = GRMPDataConfig(root=f"s3://{BUCKET}/grmp", synthetic_source=str(pristine), synthetic_types=["jpeg"],
                          synthetic_levels=2, storage=s3_storage)
    rows = load_rows(grmp)
    assert len(rows) == len(list(Path(pristine).glob("*.png"))) * 2
    assert all(r.image.startswith(f"s3://{BUCKET}/grmp/distorted/") for r in rows)

    root = f"s3://{BUCKET}/promptiqa"
    cfg = PromptIQATrainConfig.model_validate({
        "datasets": [{"name": "synthetic", "root": root, "label": "ssim"}, {"name": "synthetic", "root": root, "label": "psnr"}],
        "synthetic": {"pristine": str(pristine), "types": ["jpeg"], "levels": 2}, "storage": s3_storage.model_dump(),
    })
    prepare_synthetic(cfg)
    assert len(load_dataset("synthetic", root, s3_storage)) == len(rows)
    fs, path = resolve_fs(root, s3_storage)
    written = fs.get_file_info(f"{path}/annotations.csv").mtime
    prepare_synthetic(cfg)  # the set exists: not rebuilt
    assert fs.get_file_info(f"{path}/annotations.csv").mtime == written
