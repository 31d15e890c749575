"""The scoring job's config (`rayiqa score`, configs/score.yaml)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from rayiqa.config.base import RayConfig, Section, StageConfig, StorageConfig
from rayiqa.config.scorers import SCORER_CONFIGS, ScorerConfig, relocated, scorer_config, value_error
from rayiqa.config.tta import AdaptConfig

LLM_IQA = "llm-iqa"  # the scorer configured by the top-level mllms / segmenter / method (the job's MLLM sections)


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
    # resume: skip inputs already in the output; overwrite: clear it first; retry-errors: score the
    # inputs whose rows are errors again and replace those rows (each input stays once in the output)
    mode: Literal["resume", "overwrite", "retry-errors"] = "resume"
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
    tensor_parallel_size: int = Field(default=1, gt=0)  # vllm engine: GPUs one engine is sharded over
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)  # vllm engine (its CPU build: share of host memory)
    # vllm engine: a fixed KV cache size in bytes, overriding gpu_memory_utilization (None: vLLM infers it from that)
    kv_cache_memory_bytes: int | None = Field(default=None, gt=0)
    enforce_eager: bool = False  # vllm engine: no CUDA graphs (faster start-up, slower steps)


class SegmenterConfig(Section):
    """SAM2 automatic mask generation; knobs are SAM2AutomaticMaskGenerator's own."""

    generator: Literal["fast", "sam2"] = "fast"  # fast: filters on the low-res logits; sam2: SAM2AutomaticMaskGenerator
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

    @model_validator(mode="after")
    def _fast_generator_scope(self) -> "SegmenterConfig":
        for key in ("crop_n_layers", "min_mask_region_area"):
            if self.generator == "fast" and getattr(self, key) > 0:
                raise ValueError(f"segmenter.{key} > 0 needs segmenter.generator: sam2 "
                                 "(the fast generator runs one crop layer, no region removal)")
        return self


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


class ScoreConfig(Section):
    """`rayiqa score`: score an image collection with a registered scorer (LLM-IQA by default).

    `scorer` names it; LLM-IQA reads `mllms`, `segmenter` and `method`, any other scorer the section
    named after it (`grmp: {checkpoint: ...}`), validated by the config class its module registered."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # extras: scorer sections, checked below

    scorer: str = LLM_IQA  # a registered scorer name (rayiqa.list_scorers())
    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    mllms: list[MLLMConfig] = Field(default_factory=lambda: [MLLMConfig()], min_length=1)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    method: LLMIQAConfig = Field(default_factory=LLMIQAConfig)
    decode: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=16))
    segment: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=2))
    score: StageConfig = Field(default_factory=lambda: StageConfig(batch_size=16))
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="wrap")
    @classmethod
    def _scorer_sections(cls, data: Any, handler: Any) -> "ScoreConfig":
        """Validate each top-level key that names a registered scorer with that scorer's config (and the
        chosen scorer's defaults when its section is absent); any other unknown key is refused."""
        if not isinstance(data, dict):
            return handler(data)
        errors, fields = [], {}
        for key, value in data.items():
            if key in cls.model_fields:
                fields[key] = value
            elif key in SCORER_CONFIGS and key != LLM_IQA:
                try:
                    fields[key] = scorer_config(key, value)
                except ValidationError as e:
                    errors += relocated(e, (key,))
            else:
                errors.append({"type": "extra_forbidden", "loc": (key,), "input": value})
        name = fields.get("scorer", LLM_IQA)
        if isinstance(name, str) and name not in SCORER_CONFIGS:
            errors.append(value_error(("scorer",), f"unknown scorer {name!r}; known scorers: {', '.join(sorted(SCORER_CONFIGS))}", name))
        elif isinstance(name, str) and name != LLM_IQA and name not in fields:
            try:
                scorer_config(name)
            except ValidationError as e:
                errors += relocated(e, (name,))
        try:
            cfg = handler(fields)
        except ValidationError as e:
            errors = relocated(e, ()) + errors
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return cfg

    @property
    def scorer_config(self) -> ScorerConfig:
        """The chosen scorer's config: LLM-IQA's from the top-level sections, another's from its section."""
        if self.scorer == LLM_IQA:
            return scorer_config(LLM_IQA, {"mllms": self.mllms, "segmenter": self.segmenter, "method": self.method})
        return (self.model_extra or {}).get(self.scorer) or scorer_config(self.scorer)

    @model_validator(mode="after")
    def _engines_fit_their_actors(self) -> "ScoreConfig":
        for k, m in enumerate(self.mllms):
            if m.engine == "vllm" and m.tensor_parallel_size > max(self.score.num_gpus, 1):
                raise ValueError(
                    f"mllms[{k}].tensor_parallel_size={m.tensor_parallel_size} shards one engine over that many GPUs "
                    f"of its actor, but score.num_gpus={self.score.num_gpus}: set score.num_gpus to "
                    f"{m.tensor_parallel_size}, or use tensor_parallel_size 1 and scale with score.concurrency"
                )
        return self

    @model_validator(mode="after")
    def _adapt_needs_llm_iqa(self) -> "ScoreConfig":
        if self.scorer != LLM_IQA and self.adapt.method != "none":
            raise ValueError(f"adapt.method {self.adapt.method!r} needs scorer llm-iqa (its rankers are the job's MLLMs)")
        return self


