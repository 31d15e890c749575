"""The SAM2 segmenter: tiny preset (real SAM2 class, random weights at 256), masks, presets, checkpoints."""
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from moto.server import ThreadedMotoServer
from sam2.sam2_image_predictor import SAM2ImagePredictor

from rayiqa.config import SegmenterConfig
from rayiqa.models.sam2_spec import PRESETS, resolve_spec
from rayiqa.models.segmenter import Sam2Segmenter, backbone_feat_sizes, fetch_checkpoint, resolve_device

# Quality thresholds at 0 so that random weights still yield masks; 3x3 prompts keep CPU runs short.
TINY = SegmenterConfig(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def shapes_image(h: int = 120, w: int = 200) -> np.ndarray:
    """A non-square RGB image with flat-coloured shapes on a flat background."""
    img = np.full((h, w, 3), (30, 90, 200), np.uint8)
    img[20:80, 30:100] = (220, 40, 40)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 80) ** 2 + (xx - 150) ** 2 < 30**2] = (40, 200, 60)
    return img


@pytest.fixture(scope="module", params=["fast", "sam2"])
def seg(request) -> Sam2Segmenter:
    return Sam2Segmenter(TINY.model_copy(update={"generator": request.param}), seed=0)


@pytest.fixture(scope="module")
def seg_masks(seg: Sam2Segmenter) -> list[np.ndarray]:
    found = seg.masks(shapes_image())
    return [found.mask(i) for i in range(len(found))]


def test_tiny_is_the_real_sam2_at_256_with_random_weights(seg):
    assert type(seg.model).__name__ == "SAM2Base"
    assert seg.model.image_size == 256
    assert seg.weights == "random-init"
    assert seg.model_id == "tiny:sam2.1_hiera_t"
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # device "auto"
    assert seg.device.type == expected
    assert next(seg.model.parameters()).device.type == expected


def test_masks_are_boolean_at_input_resolution_largest_first(seg, seg_masks):
    assert len(seg_masks) >= 1
    for m in seg_masks:
        assert m.dtype == np.bool_ and m.shape == (120, 200) and m.any()
    areas = [int(m.sum()) for m in seg_masks]
    assert areas == sorted(areas, reverse=True)
    found = seg.masks(shapes_image())
    assert found.areas.tolist() == areas
    for m, box in zip(seg_masks, found.boxes.tolist()):
        ys, xs = np.nonzero(m)
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert np.array_equal(found.covered(list(range(len(found)))), np.logical_or.reduce(seg_masks))
    assert not found.covered([]).any()


@pytest.mark.parametrize("generator", ["fast", "sam2"])
def test_no_mask_passing_the_thresholds_gives_none(generator):
    # iou predictions go through a sigmoid, so none can exceed a threshold of 1.0
    strict = Sam2Segmenter(TINY.model_copy(update={"pred_iou_thresh": 1.0, "generator": generator}), seed=0)
    found = strict.masks(shapes_image())
    assert len(found) == 0 and found.boxes.shape == (0, 4) and not found.covered([]).any()


def test_same_seed_same_model_and_masks_other_seed_differs(seg, seg_masks):
    twin = Sam2Segmenter(TINY.model_copy(update={"generator": seg.kind}), seed=0)
    for (name, a), b in zip(seg.model.state_dict().items(), twin.model.state_dict().values()):
        assert torch.equal(a, b), name
    again = twin.masks(shapes_image())
    assert len(again) == len(seg_masks)
    assert all(np.array_equal(again.mask(i), b) for i, b in enumerate(seg_masks))
    other = Sam2Segmenter(TINY, seed=1)
    w0 = seg.model.sam_mask_decoder.iou_prediction_head.layers[0].weight
    assert not torch.equal(w0, other.model.sam_mask_decoder.iou_prediction_head.layers[0].weight)


def test_seeding_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Sam2Segmenter(TINY, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_feature_sizes_match_sam2_defaults_at_1024_and_scale_with_size(seg):
    trunk_q = seg.model.image_encoder.trunk.q_stride[0]
    stock = SAM2ImagePredictor(seg.model)._bb_feat_sizes  # sam2 hard-codes these for 1024
    levels = seg.model.num_feature_levels
    assert backbone_feat_sizes(1024, seg.model.backbone_stride, levels, trunk_q) == stock
    assert seg.generator.predictor._bb_feat_sizes == [(64, 64), (32, 32), (16, 16)]
    with pytest.raises(ValueError, match="multiple of 16"):
        backbone_feat_sizes(250, 16, 3, 2)


def test_image_size_explicit_in_config_overrides_preset_default():
    assert resolve_spec(SegmenterConfig()).image_size == 256
    assert resolve_spec(SegmenterConfig(image_size=512)).image_size == 512
    assert resolve_spec(SegmenterConfig(preset="hiera_l")).image_size == 1024


@pytest.mark.parametrize(
    ("preset", "config_file", "checkpoint"),
    [
        ("hiera_t", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
        ("hiera_s", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
        ("hiera_b+", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
        ("hiera_l", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
    ],
)
def test_named_presets_map_to_official_configs_and_files(preset, config_file, checkpoint):
    spec = resolve_spec(SegmenterConfig(preset=preset))
    assert (spec.config_file, spec.checkpoint) == (config_file, checkpoint)
    assert resolve_spec(SegmenterConfig(preset=preset, checkpoint="/w/x.pt")).checkpoint == "/w/x.pt"


def test_preset_table_is_sam2s_own_and_naming_a_model_imports_neither_torch_nor_sam2():
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    for model_id, config_file, checkpoint in PRESETS.values():
        assert HF_MODEL_ID_TO_FILENAMES[model_id] == (config_file, checkpoint)
    assert {m for m in HF_MODEL_ID_TO_FILENAMES if "sam2.1" in m} == {m for m, _, _ in PRESETS.values()}
    code = ("import sys; from rayiqa.config import ScoreConfig, load_config; from rayiqa.pipeline.runtime import model_provenance; "
            "cfg = load_config(ScoreConfig, None, ['input.uri=/in', 'output.uri=/out', 'mllms=[{preset: org/some-mllm}]', "
            "'segmenter.preset=hiera_l']); p = model_provenance(cfg)['segmenter']; "
            "assert (p['model_id'], p['source']) == ('facebook/sam2.1-hiera-large', 'sam2.1_hiera_large.pt'), p; "
            "print(sorted({'torch', 'sam2', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_preset_and_missing_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"segmenter.preset: unknown SAM2 preset 'hiera_xl'.*hiera_b\+"):
        resolve_spec(SegmenterConfig(preset="hiera_xl"))
    with pytest.raises(FileNotFoundError, match="segmenter.checkpoint.*never downloaded"):
        Sam2Segmenter(SegmenterConfig(preset="hiera_l", checkpoint=str(tmp_path / "nope.pt")))


def test_min_mask_region_area_without_opencv_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # find_spec reports a None entry as absent
    with pytest.raises(ValueError, match="min_mask_region_area > 0 needs OpenCV"):
        Sam2Segmenter(SegmenterConfig(generator="sam2", min_mask_region_area=100))


@pytest.mark.parametrize("key", ["crop_n_layers", "min_mask_region_area"])
def test_what_only_sam2s_generator_does_is_a_config_error_for_the_fast_one(key):
    with pytest.raises(ValueError, match=f"segmenter.{key} > 0 needs segmenter.generator: sam2"):
        SegmenterConfig(**{key: 1})
    assert getattr(SegmenterConfig(generator="sam2", **{key: 1}), key) == 1


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 4), np.uint8),
        [[1, 2]],
    ],
)
def test_bad_images_raise_value_error(seg, bad):
    with pytest.raises(ValueError, match="RGB uint8 HxWx3"):
        seg.masks(bad)


def test_empty_image_raises_value_error(seg):
    with pytest.raises(ValueError, match="empty image"):
        seg.masks(np.zeros((0, 5, 3), np.uint8))


def test_checkpoint_loads_through_the_same_path(seg, tmp_path):
    donor = Sam2Segmenter(TINY, seed=1)
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": donor.model.state_dict()}, ckpt)
    loaded = Sam2Segmenter(TINY.model_copy(update={"checkpoint": str(ckpt)}), seed=0)
    assert loaded.weights == "pretrained"
    for (name, a), b in zip(donor.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def s3(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="weights")
    yield client
    server.stop()


def test_s3_checkpoint_is_copied_once_to_the_cache(s3, tmp_path):
    payload = bytes(range(256)) * 40
    s3.put_object(Bucket="weights", Key="sam2/model.pt", Body=payload)
    local = fetch_checkpoint("s3://weights/sam2/model.pt", tmp_path)
    assert local.is_relative_to(tmp_path) and local.name == "model.pt"
    assert local.read_bytes() == payload
    assert list(local.parent.iterdir()) == [local]  # no partial file left behind
    mtime = local.stat().st_mtime_ns
    assert fetch_checkpoint("s3://weights/sam2/model.pt", tmp_path) == local
    assert local.stat().st_mtime_ns == mtime  # served from the cache, not copied again
    with pytest.raises(FileNotFoundError, match="no file at 's3://weights/sam2/missing.pt'"):
        fetch_checkpoint("s3://weights/sam2/missing.pt", tmp_path)


def test_local_checkpoint_path_is_returned_as_is(tmp_path):
    f = tmp_path / "m.pt"
    f.write_bytes(b"x")
    assert fetch_checkpoint(str(f)) == f
    assert fetch_checkpoint(f"file://{f}") == f
    assert isinstance(fetch_checkpoint(str(f)), Path)
