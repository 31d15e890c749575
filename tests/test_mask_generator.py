"""The fast mask generator keeps SAM2's generator's masks: same model, images and settings.

The tiny random-weight SAM2 keeps next to nothing at the default thresholds (its mask logits sit
within +/-1 of 0, so every stability score is ~0), so both models here get their decoder's mask
output scaled by 20 — stability scores then spread over 0.2-0.7 — and thresholds near the medians,
so that dozens of masks per image survive, as a trained SAM2 would give. Its masks all span the
image (identical boxes), so one case keeps box NMS at 1.0 (nothing suppressed) and one at 0.7.
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from rayiqa.config import SegmenterConfig
from rayiqa.io.samples import samples_dir
from rayiqa.models.mask_generator import Axis, RowCounter, Upsampled, cell_bounds, lerp_rows
from rayiqa.models.segmenter import Sam2Segmenter

LOWERED = SegmenterConfig(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.5, stability_score_thresh=0.4, box_nms_thresh=1.0)


def sharpened(generator: str, cfg: SegmenterConfig = LOWERED) -> Sam2Segmenter:
    seg = Sam2Segmenter(cfg.model_copy(update={"generator": generator}), seed=0)
    with torch.no_grad():
        for mlp in seg.model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20)
    return seg


@pytest.fixture(scope="module")
def pair() -> dict[str, Sam2Segmenter]:
    return {g: sharpened(g) for g in ("sam2", "fast")}


def photo(side: int | None = None) -> np.ndarray:
    image = Image.open(sorted(samples_dir().glob("*.jpg"))[0]).convert("RGB")
    if side:
        image = image.resize((side, side * image.height // image.width), Image.Resampling.BICUBIC)
    return np.asarray(image)


def assert_same_masks(a, b) -> int:
    """Same count (+/- 1), every mask of `a` matched in `b` with box IoU >= 0.95 and area within 2 %."""
    assert abs(len(a) - len(b)) <= 1, (len(a), len(b))
    if len(a) == 0:
        return 0
    ious = box_iou(torch.as_tensor(a.boxes, dtype=torch.float64), torch.as_tensor(b.boxes, dtype=torch.float64))
    unmatched = 0
    for i in range(len(a)):
        close = (ious[i] >= 0.95) & torch.as_tensor(np.abs(b.areas - a.areas[i]) <= 0.02 * a.areas[i])
        unmatched += not bool(close.any())
    assert unmatched <= 1, f"{unmatched} of {len(a)} masks unmatched"
    return len(a)


@pytest.mark.parametrize(
    "image",
    [photo(), photo()[:, 190:191], np.ascontiguousarray(photo()[97:98]), photo(800)],
    ids=["photo-384", "strip-1px-wide", "strip-1px-high", "photo-800"],
)
def test_fast_generator_keeps_sam2s_masks(pair, image):
    sam2, fast = (pair[g].masks(image) for g in ("sam2", "fast"))
    kept = assert_same_masks(sam2, fast)
    assert kept >= 12  # dozens: the filters let through what a trained SAM2 would
    assert kept < 3 * 36  # ... and they did filter
    if len(sam2) == len(fast):  # in fact the same masks here, up to pixels on which float rounding decides
        assert np.abs(sam2.areas - fast.areas).max() <= 2 and np.abs(sam2.boxes - fast.boxes).max() <= 1
        assert (sam2.mask(0) != fast.mask(0)).sum() <= 2
        every = list(range(len(fast)))
        assert (sam2.covered(every) != fast.covered(every)).sum() <= 2


def test_box_nms_suppresses_the_same_masks():
    cfg = LOWERED.model_copy(update={"box_nms_thresh": 0.7, "stability_score_thresh": 0.3})
    sam2, fast = (sharpened(g, cfg).masks(photo()) for g in ("sam2", "fast"))
    assert 1 <= len(sam2) < 4  # every box spans the image: NMS keeps the best few
    assert_same_masks(sam2, fast)
    assert np.abs(sam2.areas - fast.areas).max() <= 2


@pytest.mark.parametrize(("out", "low"), [((37, 53), (8, 8)), ((5, 300), (16, 16)), ((1, 1), (4, 4)), ((64, 64), (64, 64))])
def test_row_counts_equal_the_upsampled_masks(out, low):
    logits = torch.randn(5, *low, generator=torch.Generator().manual_seed(0)) * 3
    up = Upsampled(out, low, torch.device("cpu"))
    full = torch.nn.functional.interpolate(logits[:, None], out, mode="bilinear", align_corners=False)[:, 0]
    for cutoff in (-1.0, 0.0, 1.0):
        stats = up.stats(logits, [cutoff], cutoff)
        assert stats.counts[:, 0].tolist() == (full > cutoff).sum((1, 2)).tolist()
        lo, hi = up.count_bounds(logits, [cutoff])
        assert (lo[:, 0] <= stats.counts[:, 0]).all() and (stats.counts[:, 0] <= hi[:, 0]).all()
        cell_lo, cell_hi = cell_bounds(logits)  # the bounds: pixels of the cells whose corners are all (any) above
        cells = up.ys.per_cell[:, None] * up.xs.per_cell[None, :]
        assert lo[:, 0].tolist() == (cells * (cell_lo > cutoff)).sum((1, 2)).tolist()
        assert hi[:, 0].tolist() == (cells * (cell_hi > cutoff)).sum((1, 2)).tolist()
        for k in range(len(logits)):
            ys, xs = torch.nonzero(full[k] > cutoff, as_tuple=True)
            box = [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0]
            assert stats.boxes[k].tolist() == [int(v) for v in box]
        drawn = up.draw(logits, cutoff, slice(0, out[0]))
        assert torch.equal(drawn, full > cutoff)


def test_count_bounds_stay_exact_under_autocast():
    """The generator runs under bf16 autocast on a GPU; counts of thousands of pixels must not round."""
    logits = torch.randn(8, 4, 4, generator=torch.Generator().manual_seed(2))
    up = Upsampled((997, 1999), (4, 4), torch.device("cpu"))
    exact = up.count_bounds(logits, [0.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert [t.tolist() for t in up.count_bounds(logits, [0.0])] == [t.tolist() for t in exact]
    cell_lo, _ = cell_bounds(logits)
    assert exact[0][:, 0].tolist() == ((up.ys.per_cell[:, None] * up.xs.per_cell[None, :]) * (cell_lo > 0)).sum((1, 2)).tolist()


def test_rows_and_counter_pieces_agree_with_interpolate():
    logits = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(1))
    ys = Axis.build(20, 6, torch.device("cpu"))
    rows = lerp_rows(logits, ys, slice(0, 20))
    ref = torch.nn.functional.interpolate(logits[:, None], (20, 6), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(rows, ref, atol=1e-6)
    assert ys.per_cell.sum() == 20
    count, first, last = RowCounter(Axis.build(9, 6, torch.device("cpu")), 9)(rows, 0.0)
    full = torch.nn.functional.interpolate(logits[:, None], (20, 9), mode="bilinear", align_corners=False)[:, 0] > 0
    assert torch.equal(count, full.sum(-1))
