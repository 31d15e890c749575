"""The registry of scorer configs: each scorer module registers its typed config under its name, and
the job's and the endpoint's configs validate a scorer's section by that name (the config layer
knows no scorer; `rayiqa.scorers` fills this registry when `rayiqa` is imported)."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError

from rayiqa.config.base import Section


class ScorerConfig(Section):
    """Base of every scorer's config; `name` is the registered scorer it configures."""

    name: ClassVar[str]

    @property
    def model_id(self) -> str:
        """What a run's `model_ids` names for this scorer (a trained scorer adds its checkpoint)."""
        return self.name


SCORER_CONFIGS: dict[str, type[ScorerConfig]] = {}
ENDPOINT = {"endpoint": True}  # validation context of a scorer behind the endpoint (requests may bring what a job's config must)


def register_config(cls: type[ScorerConfig]) -> type[ScorerConfig]:
    """Register `cls` under `cls.name` (a class decorator); a name is registered once."""
    if SCORER_CONFIGS.get(cls.name, cls) is not cls:
        raise ValueError(f"scorer {cls.name!r} is already registered by {SCORER_CONFIGS[cls.name].__qualname__}")
    SCORER_CONFIGS[cls.name] = cls
    return cls


def scorer_names() -> list[str]:
    return sorted(SCORER_CONFIGS)


def scorer_config(name: str, raw: Any = None, context: dict | None = None) -> ScorerConfig:
    """The config of scorer `name` from a mapping (None: its defaults). Raises ValueError for a name
    nobody registered (listing the known ones), pydantic's ValidationError for a bad key or value.
    `context` is pydantic's validation context (ENDPOINT: the scorer runs behind the endpoint)."""
    if name not in SCORER_CONFIGS:
        raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(scorer_names())}")
    cls = SCORER_CONFIGS[name]
    return raw if isinstance(raw, cls) else cls.model_validate(raw or {}, context=context)


def relocated(err: ValidationError, prefix: tuple) -> list[dict]:
    """`err`'s line errors with `prefix` put before their locations (a section validated on its own)."""
    return [{"type": e["type"], "loc": (*prefix, *e["loc"]), "input": e["input"], "ctx": e.get("ctx", {})} for e in err.errors()]


def value_error(loc: tuple, message: str, value: Any) -> dict:
    """One line error for `ValidationError.from_exception_data`."""
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}
