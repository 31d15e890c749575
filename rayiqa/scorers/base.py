"""The scorer API: a registered name -> a typed config -> an object whose `score(images)` returns one
`ScoreResult` per image. The scoring job's stages, the Serve deployments and `rayiqa.create_scorer`
all build scorers here, so the same image gets the same score from each."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from rayiqa.config import ConfigError, InputConfig
from rayiqa.config.base import error_lines
from rayiqa.config.scorers import ScorerConfig, register_config, scorer_config, scorer_names


@dataclass(frozen=True)
class ScoreResult:
    """One image's score and what produced it (level probabilities, crops, clusters...); a scorer that
    refuses an image gives `score=None` and says why in `evidence["error"]`."""

    score: float | None
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The endpoint's JSON form: `score` is left out when there is none."""
        return {"evidence": self.evidence} if self.score is None else {"score": self.score, "evidence": self.evidence}


class Scorer(ABC):
    """Base of every scorer: `score` accepts arrays, PIL images and URIs; subclasses score decoded
    H x W x 3 uint8 arrays in `score_arrays`."""

    def __init__(self, config: ScorerConfig, input_cfg: InputConfig) -> None:
        self.config = config
        self.input_cfg = input_cfg  # how URIs (and a scorer's own reference images) are read

    @property
    def model_id(self) -> str:
        return self.config.model_id

    def score(self, images: Iterable[Any], **options: Any) -> list[ScoreResult]:
        """One result per image, in order: numpy RGB arrays, PIL images, or local paths / s3:// URIs;
        `options` are the scorer's call options (`score_arrays`' keyword-only arguments)."""
        return self.score_arrays([as_rgb(image, self.input_cfg) for image in images], **options)

    @abstractmethod
    def score_arrays(self, images: list[np.ndarray]) -> list[ScoreResult]:
        """Scores of decoded arrays; a scorer's keyword-only arguments are its call options (the
        endpoint passes a request's options of those names)."""


T = TypeVar("T")
R = TypeVar("R")
Factory = Callable[[ScorerConfig, InputConfig], Scorer]
FACTORIES: dict[str, Factory] = {}


def register_scorer(config_cls: type[ScorerConfig]) -> Callable[[Factory], Factory]:
    """Register a scorer: its config class (under `config_cls.name`) and the factory decorated."""

    def register(factory: Factory) -> Factory:
        register_config(config_cls)
        FACTORIES[config_cls.name] = factory
        return factory

    return register


def build_scorer(config: ScorerConfig, input_cfg: InputConfig | None = None) -> Scorer:
    """The scorer a validated config describes (what the job and the endpoint call)."""
    return FACTORIES[type(config).name](config, input_cfg or InputConfig())


def create_scorer(name: str, *, input: InputConfig | None = None, **config: Any) -> Scorer:
    """`rayiqa.create_scorer("llm-iqa", method={"levels": 5})`: a ready scorer from its name and config keys
    (configs/score.yaml documents them); ConfigError names an unknown scorer or a bad key."""
    try:
        cfg = scorer_config(name, config)
    except ValidationError as e:
        raise ConfigError(f"scorer {name!r}: {'; '.join(error_lines(e))}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return build_scorer(cfg, input)


def refused_alone(run: Callable[[list[T]], list[R]], items: list[T]) -> list[R | ValueError]:
    """`run(items)` in one call. A ValueError means the model refused an input on its own merits (a prompt
    too long, an image its processor rejects): then item by item, an item refused alone giving its error.
    Any other exception is the model's, not an input's, and propagates."""
    try:
        return run(items)
    except ValueError:
        out: list[R | ValueError] = []
        for item in items:
            try:
                out.extend(run([item]))
            except ValueError as exc:
                out.append(exc)
        return out


def list_scorers() -> list[str]:
    """The registered scorer names, sorted."""
    return scorer_names()


def as_rgb(image: Any, input_cfg: InputConfig) -> Any:
    """A PIL image or a URI -> an RGB uint8 array (URIs read like the job's inputs); arrays pass as they
    are, so a scorer can turn a malformed one into that image's error."""
    if isinstance(image, (str, Path)):
        from rayiqa.io.read import read_rgb  # pyarrow's filesystems: only for a scorer given URIs

        return read_rgb(str(image), input_cfg)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    return image


def rgb_error(image: Any) -> str | None:
    """Why `image` cannot be scored, or None for a non-empty H x W x 3 uint8 array."""
    if not isinstance(image, np.ndarray):
        return f"image must be a numpy array, got {type(image).__name__}"
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        return f"image must be a non-empty H x W x 3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
    return None
