"""Stand-ins that tests put into pipelines (importable by Ray workers through tests/ on PYTHONPATH)."""
import os
import tempfile
from pathlib import Path

from rayiqa.pipeline.stages import ScoreStage

OOM_ONCE_MARKER = Path(tempfile.gettempdir()) / "rayiqa-test-oom-once"


def _first_time(marker: Path) -> bool:
    """True for exactly one caller across the session's processes (the one that creates `marker`)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class OutOfMemoryOnceScoreStage(ScoreStage):
    """The score stage whose model runs out of device memory on every request of the first block any
    actor scores (the marker file says it happened), then works: the job must re-run that block, not
    write error rows for it."""

    def __call__(self, batch):
        self.failing = _first_time(OOM_ONCE_MARKER)
        try:
            return super().__call__(batch)
        finally:
            self.failing = False

    def _score_rows(self, batch, rows):
        import torch

        if self.failing:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in): tried to allocate 2.00 GiB")
        return super()._score_rows(batch, rows)
