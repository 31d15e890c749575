"""rayiqa: no-reference image quality assessment on Ray.

`rayiqa.create_scorer(name, **config)` builds a registered scorer (`rayiqa.list_scorers()`), whose
`score(images)` takes numpy RGB arrays, PIL images or URIs and returns one `ScoreResult` per image.
"""
from rayiqa.scorers import ScoreResult, create_scorer, list_scorers

__all__ = ["ScoreResult", "create_scorer", "list_scorers"]
