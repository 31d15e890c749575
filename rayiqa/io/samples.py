"""Where the bundled sample images live (`builtin:samples`): distorted scikit-image photos + labels.csv."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SAMPLES_URI = "builtin:samples"


def samples_dir() -> Path:
    """The folder of bundled sample images, located through importlib.resources (works installed or editable)."""
    return Path(str(files("rayiqa") / "assets" / "samples"))
