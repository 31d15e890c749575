"""Typed, validated job configs: YAML -> pydantic models that reject unknown keys and bad values.

Every key has a default, so an empty file is a valid config (the offline demo). Errors name the
dotted key and, for choices, the allowed values. `configs/*.yaml` documents every key. One module
per job; this package re-exports them.
"""
from rayiqa.config.base import (
    ConfigError,
    RayConfig,
    Section,
    StageConfig,
    StorageConfig,
    load_config,
    parse_overrides,
)
from rayiqa.config.score import (
    InputConfig,
    LLMIQAConfig,
    MLLMConfig,
    OutputConfig,
    ScoreConfig,
    SegmenterConfig,
)

__all__ = [
    "ConfigError",
    "InputConfig",
    "LLMIQAConfig",
    "MLLMConfig",
    "OutputConfig",
    "RayConfig",
    "ScoreConfig",
    "Section",
    "SegmenterConfig",
    "StageConfig",
    "StorageConfig",
    "load_config",
    "parse_overrides",
]
