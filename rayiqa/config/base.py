"""Config plumbing: strict pydantic sections, dotted overrides, YAML loading with errors that name keys."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

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
    # Attempts per S3 request, retried by the AWS SDK ("standard" mode: exponential backoff with
    # jitter, <= 20 s apart); 10 rides out roughly a minute of unreachable store before the run fails.
    retry_attempts: int = Field(default=10, ge=1)


class StageConfig(Section):
    """Actor-pool settings of one Ray Data stage (like ray.data.llm's stage configs)."""

    batch_size: int = Field(default=4, gt=0)
    concurrency: tuple[int, int] = (1, 1)  # (min, max) actors
    num_cpus: float = Field(default=0.5, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    # Times Ray Data re-runs a block whose actor died or whose model failed (device error, out of
    # memory) before the run stops; an input the model refuses is an error row instead.
    max_task_retries: int = Field(default=3, ge=0)

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


def error_lines(err: ValidationError) -> list[str]:
    """One `dotted.key: message` per problem of a validation error (an unknown key says so)."""
    return [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}" for e in err.errors()]


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


_ENV_REFERENCE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(node: Any, key: str = "") -> Any:
    """`${NAME}` / `${NAME:-default}` in string values -> the environment's value, so one variable a
    cluster manifest sets (a bucket, a model source) reaches every key that names it."""
    if isinstance(node, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{key}.{i}") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def value(ref: re.Match) -> str:
        found = os.environ.get(ref[1]) or ref[2]
        if found is None:
            raise ConfigError(f"{key or '(top level)'}: environment variable {ref[1]} is not set (or empty)")
        return found

    return _ENV_REFERENCE.sub(value, node)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(model: type[BaseModel], path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Read YAML at `path` (None: all defaults), apply dotted overrides, expand `${ENV}`, validate into `model`."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
    raw = expand_env(_merge(raw, parse_overrides(list(overrides))))
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        problems = "\n".join(f"  {line}" for line in error_lines(e))
        raise ConfigError(f"invalid {model.__name__}{where}:\n{problems}") from None
