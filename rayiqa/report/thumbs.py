"""Thumbnails of the shown images with their LLM-IQA evidence drawn on: each crop's box and score.

Images are read as the job read them (`rayiqa.io.read.try_read_rgb` under the run's input limits
and storage options), so s3:// inputs work; an input that is gone or unreadable now becomes a
placeholder that says why.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rayiqa.config import InputConfig
from rayiqa.io.read import try_read_rgb

THUMB_SIDE = 256  # longest side in pixels
BOX_COLOURS = ((255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0), (0, 255, 0))
BOX_WIDTH = 2
LABEL_STEP = 13  # pixels between stacked crop-score labels (11 px font)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def thumbnail(image: np.ndarray) -> tuple[Image.Image, float]:
    """An RGB image scaled so its longest side is THUMB_SIDE, and the scale from image to thumbnail pixels."""
    im = Image.fromarray(image)
    scale = THUMB_SIDE / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST), scale


def box_in_thumbnail(box: list[int], scale: float) -> tuple[int, int, int, int]:
    """An end-exclusive [x0, y0, x1, y1] image box as the inclusive pixel rectangle its outline takes in the thumbnail."""
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    return x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)


def annotate(thumb: Image.Image, scale: float, boxes: list[list[int]], scores: list[float]) -> Image.Image:
    """The thumbnail with each crop's box outlined and its score written inside its top-left corner."""
    out = thumb.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=11)
    labels: list[tuple[int, int, int, int]] = []
    for i, (box, score) in enumerate(zip(boxes, scores)):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        rect = box_in_thumbnail(box, scale)
        draw.rectangle(rect, outline=colour, width=BOX_WIDTH)
        text, x, y = f"{score:.2f}", rect[0] + BOX_WIDTH + 1, rect[1] + BOX_WIDTH + 1
        while any(_overlaps(draw.textbbox((x, y), text, font=font), other) for other in labels):
            y += LABEL_STEP  # crops with the same corner (SAM2 often finds the whole image twice): stack the labels
        labels.append(draw.textbbox((x, y), text, font=font))
        draw.rectangle(labels[-1], fill=(0, 0, 0))
        draw.text((x, y), text, fill=colour, font=font)
    return out


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def placeholder(kind: str) -> Image.Image:
    """A grey tile that names the kind of error that left no thumbnail."""
    im = Image.new("RGB", (THUMB_SIDE, THUMB_SIDE * 3 // 4), (200, 200, 200))
    draw = ImageDraw.Draw(im)
    draw.multiline_text((12, 12), f"image unavailable\n{kind}", fill=(60, 60, 60), font=ImageFont.load_default(size=14))
    return im


class ImageReader:
    """Reads inputs as the job does: `try_read_rgb` under the run's input config."""

    def __init__(self, input_cfg: InputConfig):
        self.cfg = input_cfg

    def __call__(self, uri: str) -> tuple[np.ndarray | None, str | None, str | None]:
        """As `try_read_rgb`: (image, None, None) or (None, error kind, message); never raises for a
        bad, missing or unreachable input."""
        try:
            return try_read_rgb(uri, self.cfg)
        except (ValueError, OSError) as e:
            return None, "read_error", f"{uri}: {type(e).__name__}: {e}"


def evidence_thumbnail(row: dict, read: ImageReader) -> tuple[bytes, str | None]:
    """PNG of one output row's image with its crops (mean crop score over the models), or a
    placeholder; the second value says why there is no image, None when there is one."""
    image, kind, msg = read(row["path"])
    if image is None:
        return png_bytes(placeholder(kind)), f"{kind}: {msg}"
    thumb, scale = thumbnail(image)
    boxes = row.get("crop_boxes") or []
    per_model = [s for s in row.get("crop_scores") or [] if s]
    scores = np.mean(per_model, axis=0).tolist() if per_model else [float("nan")] * len(boxes)
    return png_bytes(annotate(thumb, scale, boxes, scores)), None
