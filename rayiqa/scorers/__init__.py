"""Scorers: one module per scorer registers its typed config and factory; `create_scorer(name, **config)`
builds one, `list_scorers()` names them. Importing this package registers the built-in scorers
(their modules import torch and the models only when a scorer is built)."""
from rayiqa.scorers import grmp, llm_iqa, llm_tta, promptiqa  # noqa: F401  (registration)
from rayiqa.scorers.base import Scorer, ScoreResult, build_scorer, create_scorer, list_scorers, register_scorer

__all__ = ["ScoreResult", "Scorer", "build_scorer", "create_scorer", "list_scorers", "register_scorer"]
