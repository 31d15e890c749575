"""The serving endpoint's config (`rayiqa serve`, configs/serve.yaml): HTTP, limits, auth, one entry per model."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    SerializationInfo,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from rayiqa.config.base import RayConfig, Section, StorageConfig
from rayiqa.config.scorers import ENDPOINT, SCORER_CONFIGS, ScorerConfig, relocated, scorer_config, value_error


class DeploymentConfig(Section):
    """Replicas, resources and batching of one Ray Serve deployment (autoscaling when min < max)."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)  # per replica, what autoscaling aims at
    upscale_delay_s: float = Field(default=3.0, ge=0)
    downscale_delay_s: float = Field(default=60.0, ge=0)
    max_ongoing_requests: int = Field(default=8, ge=1)  # per replica; more queue in the caller
    num_cpus: float = Field(default=0.5, ge=0)  # fractional resources per replica
    num_gpus: float = Field(default=0.0, ge=0)
    max_batch_size: int = Field(default=8, ge=1)  # @serve.batch: images per model call
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    # Serve notices a dead replica at its next health check and only then starts a replacement
    health_check_period_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "DeploymentConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        return {
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
            },
        }


KIND_ALIASES = {"tta": "llm-tta"}  # Serve's earlier name of a scorer kind -> the registered scorer


class ScorerModelConfig(Section):
    """A registered scorer behind one deployment: `kind` names it (rayiqa.list_scorers(), or an alias in
    KIND_ALIASES) and its config keys, those of its section in configs/score.yaml, sit beside `deployment`."""

    kind: str
    scorer: SerializeAsAny[ScorerConfig]
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)

    @model_validator(mode="wrap")
    @classmethod
    def _scorer_keys(cls, data: Any, handler: Any) -> "ScorerModelConfig":
        """Validate the entry's scorer keys with the config class the scorer `kind` registered."""
        if not isinstance(data, dict):
            return handler(data)
        own = {k: data[k] for k in ("kind", "deployment") if k in data}
        keys = data["scorer"] if "scorer" in data else {k: v for k, v in data.items() if k not in own}  # dumped, or as written
        errors = []
        try:
            own["scorer"] = scorer_config(KIND_ALIASES.get(data.get("kind"), data.get("kind")), keys, ENDPOINT)
        except ValidationError as e:
            errors += relocated(e, ())
        except ValueError as e:
            errors.append(value_error(("kind",), str(e), data.get("kind")))
        try:
            cfg = handler(own)
        except ValidationError as e:
            errors = [err for err in relocated(e, ()) if err["loc"] != ("scorer",)] + errors
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return cfg


def _model_entry(value: Any) -> Any:
    """One `models:` entry, its errors located under its kind as pydantic's tagged unions put them."""
    if isinstance(value, ScorerModelConfig):
        return value
    kind = value.get("kind") if isinstance(value, dict) else None
    try:
        return ScorerModelConfig.model_validate(value)
    except ValidationError as e:
        known = kind in SCORER_CONFIGS or kind in KIND_ALIASES
        raise ValidationError.from_exception_data("ModelConfig", relocated(e, (kind,) if known else ())) from None


def _dump_entry(entry: Section, info: SerializationInfo) -> dict[str, Any]:
    return entry.model_dump(mode=info.mode)


ModelConfig = Annotated[ScorerModelConfig, PlainValidator(_model_entry), PlainSerializer(_dump_entry)]


class HTTPConfig(Section):
    # where Serve's HTTP proxy listens; another address than loopback needs auth.api_key_env (or auth.open)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    route_prefix: str = "/"


class LimitsConfig(Section):
    """Per-request limits; a request beyond them gets a 413 with a message."""

    max_bytes: int = Field(default=20_000_000, gt=0)  # encoded bytes per image
    max_pixels: int = Field(default=40_000_000, gt=0)  # decoded width x height per image
    max_images: int = Field(default=8, gt=0)  # images per request
    fetch_timeout_s: float = Field(default=10.0, gt=0)  # bounds each s3:// or http(s):// image fetch, retries included


class AuthConfig(Section):
    api_key_env: str | None = None  # name of the env var holding the API key; null: no auth
    open: bool = False  # true: serve a non-loopback http.host without an API key (a warning at start)


class FetchConfig(Section):
    """Which remote images a request may name. http(s) hosts must resolve to public addresses."""

    allow_hosts: list[str] | None = None  # null: any public host; a list: only these (which may be internal)
    allow_buckets: list[str] | None = None  # s3:// buckets; null: any the storage credentials can read


class ServeConfig(Section):
    """`rayiqa serve`: one HTTP ingress and one deployment per named model."""

    app_name: str = "rayiqa"
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    ingress: DeploymentConfig = Field(default_factory=lambda: DeploymentConfig(num_cpus=0.25, max_ongoing_requests=64))
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)  # for s3:// image URIs
    models: dict[str, ModelConfig] = Field(
        default_factory=lambda: {"llm-iqa": ScorerModelConfig(kind="llm-iqa"), "tta-tiny-cnn": ScorerModelConfig(kind="tta")},
        min_length=1,
    )
    ray: RayConfig = Field(default_factory=RayConfig)
