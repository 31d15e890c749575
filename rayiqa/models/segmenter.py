"""SAM2 automatic masks for LLM-IQA's object-centred sub-images (paper Sec. 3.2: SAM2 at a coarser
granularity, set through SAM2AutomaticMaskGenerator's own knobs).

One code path for every preset: build the SAM2.1 model from the package's shipped Hydra config,
load a checkpoint if there is one (local path or object-storage URI, copied to a local cache; never
downloaded from the internet), and wrap its predictor in a mask generator: the fast one
(rayiqa.models.mask_generator) or the package's own. "tiny" is the real hiera_t model with seeded
random weights at image size 256, for tests and offline demos.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch
from pyarrow import fs as pafs
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.amg import batched_mask_to_box

from rayiqa.config import SegmenterConfig
from rayiqa.models.mask_generator import FastMaskGenerator, KeptMasks
from rayiqa.models.sam2_spec import resolve_spec

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("RAYIQA_CACHE_DIR", Path.home() / ".cache" / "rayiqa"))


def fetch_checkpoint(uri: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """A local path for `uri`: local files as they are, object-storage URIs (s3://, gs://, ...)
    copied once into `cache_dir` with pyarrow (credentials and endpoint from the environment)."""
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"segmenter.checkpoint: SAM2 checkpoint {str(path)!r} not found; set it to a local .pt "
                "path or an s3:// URI (weights are never downloaded from the internet)"
            )
        return path
    remote, remote_path = pafs.FileSystem.from_uri(uri)
    info = remote.get_file_info(remote_path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"segmenter.checkpoint: no file at {uri!r}")
    local = cache_dir / "sam2" / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(remote_path).name
    if local.is_file() and local.stat().st_size == info.size:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f"{local.name}.{os.getpid()}.part")  # actors on one node may race
    pafs.copy_files(
        remote_path, str(partial), source_filesystem=remote, destination_filesystem=pafs.LocalFileSystem()
    )
    os.replace(partial, local)
    return local


def backbone_feat_sizes(
    image_size: int, backbone_stride: int, num_levels: int, q_stride: int
) -> list[tuple[int, int]]:
    """Spatial sizes of the backbone feature levels the predictor reshapes to, finest first.

    The coarsest level is image_size / backbone_stride; each finer level is q_stride (Hiera's
    pooling stride) times larger. At 1024 this gives sam2's hard-coded [(256,256),(128,128),(64,64)].
    """
    if image_size % backbone_stride:
        raise ValueError(f"segmenter.image_size must be a multiple of {backbone_stride}, got {image_size}")
    coarsest = image_size // backbone_stride
    return [(coarsest * q_stride**k,) * 2 for k in reversed(range(num_levels))]


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DenseMasks:
    """SAM2AutomaticMaskGenerator's masks (full-size boolean arrays) behind KeptMasks' interface."""

    def __init__(self, masks: list[np.ndarray], shape: tuple[int, int]) -> None:
        self.shape = shape
        self._masks = masks
        self.areas = np.asarray([int(m.sum()) for m in masks], dtype=np.int64)
        inclusive = batched_mask_to_box(torch.from_numpy(np.stack(masks))).numpy() if masks else np.zeros((0, 4))
        self.boxes = (inclusive + [0, 0, 1, 1]).astype(np.int32)  # end-exclusive

    def __len__(self) -> int:
        return len(self._masks)

    def mask(self, i: int) -> np.ndarray:
        return self._masks[i]

    def covered(self, index: list[int]) -> np.ndarray:
        out = np.zeros(self.shape, dtype=bool)
        for i in index:
            out |= self._masks[i]
        return out


class Sam2Segmenter:
    """Object masks for one RGB image: areas and boxes at the input's resolution, masks on demand."""

    def __init__(self, cfg: SegmenterConfig, seed: int = 0, cache_dir: Path = DEFAULT_CACHE) -> None:
        if cfg.min_mask_region_area > 0 and importlib.util.find_spec("cv2") is None:
            raise ValueError(
                "segmenter.min_mask_region_area > 0 needs OpenCV (pip install opencv-python-headless); "
                "set it to 0 or install OpenCV"
            )
        spec = resolve_spec(cfg)
        ckpt = str(fetch_checkpoint(spec.checkpoint, cache_dir)) if spec.checkpoint else None
        self.model_id = spec.model_id
        self.kind = cfg.generator
        self.weights = "pretrained" if ckpt else "random-init"
        self.device = resolve_device(cfg.device)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            self.model = build_sam2(
                spec.config_file,
                ckpt_path=ckpt,
                device=str(self.device),
                hydra_overrides_extra=[f"++model.image_size={spec.image_size}"],
            )
        if self.weights == "random-init":
            log.warning("SAM2 %s runs on random weights (seed %d): masks mean nothing", self.model_id, seed)
        thresholds = dict(
            points_per_batch=cfg.points_per_batch,
            pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_score_thresh,
            box_nms_thresh=cfg.box_nms_thresh,
        )
        if cfg.generator == "fast":
            self.generator = FastMaskGenerator(SAM2ImagePredictor(self.model), cfg.points_per_side, **thresholds)
        else:
            self.generator = SAM2AutomaticMaskGenerator(
                self.model,
                points_per_side=cfg.points_per_side,
                crop_n_layers=cfg.crop_n_layers,
                min_mask_region_area=cfg.min_mask_region_area,
                output_mode="binary_mask",
                **thresholds,
            )
        # The predictor hard-codes the feature sizes of a 1024 input; derive them from this model.
        self.generator.predictor._bb_feat_sizes = backbone_feat_sizes(
            self.model.image_size,
            self.model.backbone_stride,
            self.model.num_feature_levels,
            self.model.image_encoder.trunk.q_stride[0],
        )

    def masks(self, image: np.ndarray) -> KeptMasks | DenseMasks:
        """Non-empty masks at the input's resolution, largest area first (none when SAM2 keeps none).

        Raises ValueError for anything but an RGB uint8 HxWx3 array with H, W > 0.
        """
        is_array = isinstance(image, np.ndarray)
        if not (is_array and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = f"{image.dtype} {image.shape}" if is_array else type(image).__name__
            raise ValueError(f"segmenter expects an RGB uint8 HxWx3 array, got {got}")
        if 0 in image.shape[:2]:
            raise ValueError(f"segmenter got an empty image of shape {image.shape}")
        if self.kind == "fast":
            return self.generator.generate(image)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            records = self.generator.generate(image)
        records = [r for r in records if r["area"] > 0]
        records.sort(key=lambda r: r["area"], reverse=True)
        return DenseMasks([np.asarray(r["segmentation"], dtype=bool) for r in records], image.shape[:2])
