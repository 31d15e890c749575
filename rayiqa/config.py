"""Typed, validated job configs: YAML -> pydantic models that reject unknown keys and bad values.

Every key has a default, so an empty file is a valid config (the offline demo). Errors name the
dotted key and, for choices, the allowed values. `configs/*.yaml` documents every key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key(s) at fault."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Section):
    """Object-storage options passed to s3fs / pyarrow; unset values come from the environment."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    key: str | None = None
    secret: str | None = None


class InputConfig(Section):
    uri: str = "builtin:samples"  # folder, glob, s3://prefix, or a .parquet/.csv/.txt list of URIs
    list_column: str = "path"  # column holding URIs when `uri` is a Parquet/CSV list
    extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"]
    )
    max_pixels: int = Field(default=64_000_000, gt=0)  # decompression-bomb limit per image
    max_bytes: int = Field(default=100_000_000, gt=0)  # files larger than this become error rows
    limit: int | None = Field(default=None, gt=0)  # score only the first N inputs (smoke runs)
    storage: StorageConfig = Field(default_factory=StorageConfig)


class OutputConfig(Section):
    uri: str = "out/scores"  # a folder (local or s3://) that receives Parquet parts + manifest
    mode: Literal["resume", "overwrite"] = "resume"  # resume: skip inputs already in the output
    storage: StorageConfig = Field(default_factory=StorageConfig)


class MLLMConfig(Section):
    """One MLLM of the ensemble. `preset: tiny` builds a random-weight Qwen2.5-VL offline."""

    preset: str = "tiny"  # "tiny", a Hugging Face id, or a local/s3 checkpoint folder
    engine: Literal["transformers", "vllm"] = "transformers"
    device: str = "auto"  # transformers engine: "auto", "cpu", "cuda", "cuda:1"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=8, gt=0)  # requests per forward
    min_pixels: int = Field(default=56 * 56, gt=0)  # processor resize bounds (Qwen2-VL style)
    max_pixels: int = Field(default=448 * 448, gt=0)
    max_model_len: int = Field(default=4096, gt=0)  # vllm engine
    tensor_parallel_size: int = Field(default=1, gt=0)  # vllm engine
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)  # vllm engine


class SegmenterConfig(Section):
    """SAM2 automatic mask generation; knobs are SAM2AutomaticMaskGenerator's own."""

    preset: str = "tiny"  # "tiny" (random weights) or a SAM2.1 name: hiera_t, hiera_s, hiera_b+, hiera_l
    checkpoint: str | None = None  # .pt path; default for named presets: the official file name
    image_size: int | None = Field(default=None, gt=0)  # SAM2 input size; None: the preset's (tiny 256, others 1024)
    device: str = "auto"
    points_per_side: int = Field(default=16, gt=0)  # coarser than SAM2's 32, as the paper asks
    points_per_batch: int = Field(default=64, gt=0)
    pred_iou_thresh: float = Field(default=0.8, ge=0, le=1)
    stability_score_thresh: float = Field(default=0.9, ge=0, le=1)
    box_nms_thresh: float = Field(default=0.7, ge=0, le=1)
    crop_n_layers: int = Field(default=0, ge=0)
    min_mask_region_area: int = Field(default=0, ge=0)


class LLMIQAConfig(Section):
    """Section 3 of the LLM-IQA paper."""

    levels: Literal[3, 5, 7, 9] = 7  # K
    standard: Literal["word", "number", "sentence"] = "word"
    readout: Literal["expectation", "argmax"] = "expectation"
    segmentation: bool = True  # False: whole image only (Table 3 exp. 6)
    crop: Literal["bbox", "mask"] = "bbox"  # bbox: original pixels; mask: zero-padded object
    area_threshold: float = Field(default=0.02, ge=0, lt=1)  # t, as a fraction of the image area
    complement: bool = True  # add the uncovered-area mask when it is >= t (Algorithm 1)
    lam: float = Field(default=1.0, ge=0)  # lambda in s = s_global + lambda * s_local


class StageConfig(Section):
    """Actor-pool settings of one Ray Data stage (like ray.data.llm's stage configs)."""

    batch_size: int = Field(default=4, gt=0)
    concurrency: tuple[int, int] = (1, 1)  # (min, max) actors
    num_cpus: float = Field(default=0.5, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)

    @field_validator("concurrency", mode="before")
    @classmethod
    def _int_means_fixed(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _ordered(self) -> "StageConfig":
        lo, hi = self.concurrency
        if lo < 1 or hi < lo:
            raise ValueError(f"concurrency must be 1 <= min <= max, got {self.concurrency}")
        return self


class RayConfig(Section):
    address: str | None = None  # None: join RAY_ADDRESS if set, else start a local Ray
    num_cpus: int | None = None  # local Ray only


class ScoreConfig(Section):
    """`rayiqa score`: LLM-IQA mix-grained scoring of an image collection."""

    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    mllms: list[MLLMConfig] = Field(default_factory=lambda: [MLLMConfig()], min_length=1)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    method: LLMIQAConfig = Field(default_factory=LLMIQAConfig)
    decode: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=16))
    segment: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=2))
    score: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=16))
    ray: RayConfig = Field(default_factory=RayConfig)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`key.sub=value` strings (values parsed as YAML) -> nested dict."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(model: type[BaseModel], path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Read YAML at `path` (None: all defaults), apply dotted overrides, validate into `model`."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
    raw = _merge(raw, parse_overrides(list(overrides)))
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid {model.__name__}{where}:\n{_format_errors(e)}") from None
