"""Automatic masks for LLM-IQA, decided on SAM2's low-resolution mask logits.

SAM2's own generator upsamples every candidate mask (3 per grid point) to the input's resolution
before filtering, so its time and memory grow with candidates x input pixels. This generator runs
the same point grid through the same SAM2 predictor and mask decoder, and applies the same filters
(predicted IoU, stability score, box NMS) with the same thresholds, to the input-resolution masks
those logits define (bilinear upsampling, as SAM2's `postprocess_masks`) without forming them:

- bilinear upsampling is a convex combination of four low-res logits, so a 2x2 window whose logits
  are all above (all at or below) a cutoff is above (at or below) it at every input pixel inside it:
  counts, hence stability scores, are bounded from the low-res logits alone and decided there;
- a mask the bounds leave undecided, and every survivor's area and box, are counted exactly, row by
  row: along a row the upsampled logit is linear between two low-res columns, so the pixels above a
  cutoff in each such segment are a range found by a binary search over the columns' source
  coordinates. Cost O(rows x low-res columns) per mask instead of O(rows x columns).

Only the kept masks are ever drawn at full resolution, in row bands, and only when asked (the
complement of Algorithm 1, or `crop: mask`). Without cropping layers or small-region removal
(`crop_n_layers: 0`, `min_mask_region_area: 0`), which the caller checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.amg import build_point_grid
from torchvision.ops import batched_nms

WORK_ELEMENTS = 1 << 20  # elements per temporary in the row-wise passes (bounds their memory)
MEAN = (0.485, 0.456, 0.406)  # SAM2Transforms' normalisation
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Axis:
    """Where input-resolution coordinates fall on a low-res axis under bilinear upsampling with
    align_corners=False (PyTorch's source-index rule): `src` per output pixel, its lower low-res
    index `lo`, and the number of output pixels per low-res index (`per_cell`)."""

    src: torch.Tensor  # float32 (out,)
    lo: torch.Tensor  # int64 (out,)
    per_cell: torch.Tensor  # int64 (in,)

    @classmethod
    def build(cls, out_size: int, in_size: int, device: torch.device) -> "Axis":
        scale = torch.tensor(in_size, dtype=torch.float32) / out_size
        src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
        lo = src.long().clamp_(max=in_size - 1)
        return cls(src.to(device), lo.to(device), torch.bincount(lo, minlength=in_size).to(device))


def lerp_rows(logits: torch.Tensor, ys: Axis, rows: slice) -> torch.Tensor:
    """Input-resolution rows `rows` of low-res logits (B, h, w) upsampled along y only: (B, rows, w)."""
    lo = ys.lo[rows]
    hi = (lo + 1).clamp_(max=logits.shape[1] - 1)
    lam = (ys.src[rows] - lo.float())[None, :, None]
    return logits[:, lo] * (1 - lam) + logits[:, hi] * lam


def cell_bounds(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each low-res cell's four corner logits (the last row/column repeated): (B, h, w) each."""
    padded = F.pad(logits[:, None], (0, 1, 0, 1), mode="replicate")
    hi = F.max_pool2d(padded, 2, stride=1)[:, 0]
    lo = -F.max_pool2d(-padded, 2, stride=1)[:, 0]
    return lo, hi


class RowCounter:
    """Exact counts, per input row, of upsampled logits above a cutoff, from y-upsampled rows (B, R, w).

    Along a row the value between low-res columns j and j+1 is a + (b - a) * (src - j), linear in
    the source coordinate src = (x + 0.5) * scale - 0.5 (clamped at 0), itself linear in x: the
    columns above the cutoff in each segment are a range whose end follows from inverting both."""

    def __init__(self, xs: Axis, out_size: int) -> None:
        w = xs.per_cell.numel()
        self.scale = float(torch.tensor(w, dtype=torch.float32) / out_size)
        self.limit = float(out_size + 1)
        self.start = torch.cumsum(xs.per_cell, 0) - xs.per_cell  # first output column of each segment
        self.end = self.start + xs.per_cell
        self.segment = torch.arange(w, dtype=torch.float64, device=xs.src.device)

    def __call__(self, rows: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(count, first column, last column) per row above `cutoff`; first > last when none."""
        a = rows.double()
        d = torch.cat([a[..., 1:], a[..., -1:]], dim=-1) - a  # the last segment is constant
        cross = self.segment + (cutoff - a) / torch.where(d == 0, 1.0, d)  # src where the value is the cutoff
        x = ((cross + 0.5) / self.scale - 0.5).clamp_(-1.0, self.limit)  # ... and its output column
        start, end = self.start.expand_as(a), self.end.expand_as(a)
        rising = torch.where(cross < 0, start, torch.floor(x).long() + 1).clamp_(start, end)  # above for src > cross
        falling = torch.where(cross <= 0, start, torch.ceil(x).long()).clamp_(start, end)  # above for src < cross
        first = torch.where(d > 0, rising, start)
        stop = torch.where(d > 0, end, torch.where(d < 0, falling, torch.where(a > cutoff, end, start)))
        count = (stop - first).clamp_(min=0)
        seg_first = torch.where(count > 0, first, torch.iinfo(torch.int64).max).amin(-1)
        seg_last = torch.where(count > 0, stop - 1, -1).amax(-1)
        return count.sum(-1), seg_first, seg_last


@dataclass
class MaskStats:
    """Exact input-resolution statistics of masks: pixel counts above each cutoff, and the box at
    the mask threshold (inclusive x0, y0, x1, y1 as SAM2's `batched_mask_to_box`; zeros when empty)."""

    counts: torch.Tensor  # int64 (B, cutoffs)
    boxes: torch.Tensor  # int64 (B, 4)


class Upsampled:
    """Low-res logits of one image seen at the input's resolution (H, W) without forming it."""

    def __init__(self, shape: tuple[int, int], low_res: tuple[int, int], device: torch.device) -> None:
        self.shape = shape
        self.ys = Axis.build(shape[0], low_res[0], device)
        self.xs = Axis.build(shape[1], low_res[1], device)
        self.rows = RowCounter(self.xs, shape[1])

    def count_bounds(self, logits: torch.Tensor, cutoffs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds on the number of input pixels above each cutoff, per mask (B, cutoffs):
        each low-res cell's pixel count, summed as two matrix-vector products (exact: float32 row
        sums stay under 2^24, the rest in float64, never autocast to a lower precision)."""
        lo, hi = cell_bounds(logits)
        wx, wy = self.xs.per_cell.float(), self.ys.per_cell.double()

        def pixels(inside: torch.Tensor) -> torch.Tensor:
            return ((inside.float() @ wx).double() @ wy).round().long()

        with torch.autocast(logits.device.type, enabled=False):
            return (torch.stack([pixels(lo > c) for c in cutoffs], 1), torch.stack([pixels(hi > c) for c in cutoffs], 1))

    def stats(self, logits: torch.Tensor, cutoffs: list[float], box_cutoff: float) -> MaskStats:
        """Exact counts above each cutoff and the box above `box_cutoff`, in row bands of bounded size."""
        n, (h_in, w_low) = logits.shape[0], (self.shape[0], logits.shape[2])
        counts = torch.zeros(n, len(cutoffs), dtype=torch.int64, device=logits.device)
        boxes = torch.zeros(n, 4, dtype=torch.int64, device=logits.device)
        if n == 0:
            return MaskStats(counts, boxes)
        first = torch.full((n,), torch.iinfo(torch.int64).max, device=logits.device)
        last = torch.full((n,), -1, device=logits.device)
        top = torch.full((n,), h_in, device=logits.device)
        bottom = torch.full((n,), -1, device=logits.device)
        # Counting a row costs ~25 float64 operations per low-res column, drawing it a few per input column.
        drawn = self.shape[1] < 16 * w_low
        band = max(1, WORK_ELEMENTS // (n * (self.shape[1] if drawn else w_low)))
        columns = torch.arange(self.shape[1], device=logits.device)
        for r0 in range(0, h_in, band):
            rows = lerp_rows(logits, self.ys, slice(r0, r0 + band))
            if drawn:
                full = F.interpolate(rows[:, None], size=(rows.shape[1], self.shape[1]), mode="bilinear", align_corners=False)[:, 0]
                above = full > box_cutoff
                row_count = above.view(torch.uint8).sum(-1, dtype=torch.int32)  # as bytes: several times faster than bools
                for k, cutoff in enumerate(cutoffs):
                    more = row_count if cutoff == box_cutoff else (full > cutoff).view(torch.uint8).sum(-1, dtype=torch.int32)
                    counts[:, k] += more.sum(1)
                hit, cols = row_count > 0, above.any(1)
                row_first = torch.where(cols, columns, self.shape[1]).amin(-1, keepdim=True)
                row_last = torch.where(cols, columns, -1).amax(-1, keepdim=True)
            else:
                for k, cutoff in enumerate(cutoffs):
                    counts[:, k] += self.rows(rows, cutoff)[0].sum(-1)
                row_count, row_first, row_last = self.rows(rows, box_cutoff)
                hit = row_count > 0
            y = torch.arange(r0, r0 + rows.shape[1], device=logits.device)
            top = torch.minimum(top, torch.where(hit, y, h_in).amin(-1))
            bottom = torch.maximum(bottom, torch.where(hit, y, -1).amax(-1))
            first, last = torch.minimum(first, row_first.amin(-1)), torch.maximum(last, row_last.amax(-1))
        found = bottom >= 0
        boxes[found] = torch.stack([first, top, last, bottom], dim=1)[found]
        return MaskStats(counts, boxes)

    def draw(self, logits: torch.Tensor, cutoff: float, rows: slice) -> torch.Tensor:
        """Masks (B, rows, W) above `cutoff` for input rows `rows` (SAM2's bilinear upsampling)."""
        band = lerp_rows(logits, self.ys, rows)
        full = F.interpolate(band[:, None], size=(band.shape[1], self.shape[1]), mode="bilinear", align_corners=False)
        return full[:, 0] > cutoff


class KeptMasks:
    """The kept masks of one image: areas and end-exclusive boxes at the input's resolution (largest
    area first); the masks themselves drawn on demand from their low-res logits, in row bands."""

    def __init__(self, upsampled: Upsampled, logits: torch.Tensor, areas: np.ndarray, boxes: np.ndarray, cutoff: float):
        self.shape = upsampled.shape
        self._up, self._logits, self._cutoff = upsampled, logits, cutoff
        self.areas, self.boxes = areas, boxes

    def __len__(self) -> int:
        return len(self.areas)

    def _bands(self, index: list[int]):
        logits = self._logits[index]
        band = max(1, WORK_ELEMENTS // max(1, len(index) * self.shape[1]))
        for r0 in range(0, self.shape[0], band):
            yield r0, self._up.draw(logits, self._cutoff, slice(r0, r0 + band))

    def mask(self, i: int) -> np.ndarray:
        """Mask i as a boolean (H, W) array."""
        out = np.empty(self.shape, dtype=bool)
        for r0, drawn in self._bands([i]):
            out[r0 : r0 + drawn.shape[1]] = drawn[0].cpu().numpy()
        return out

    def covered(self, index: list[int]) -> np.ndarray:
        """Pixels covered by any of the masks `index`, as a boolean (H, W) array."""
        out = np.zeros(self.shape, dtype=bool)
        if index:
            for r0, drawn in self._bands(list(index)):
                out[r0 : r0 + drawn.shape[1]] = drawn.any(0).cpu().numpy()
        return out


def model_input(image: np.ndarray, resolution: int, device: torch.device) -> np.ndarray:
    """The image resized to the model's square input as SAM2Transforms does (to [0, 1], bilinear
    with antialiasing), in row bands so that no float copy of a large input is ever made; returned
    as float32 HWC, which SAM2ImagePredictor.set_image takes as it is (its resize is then the identity)."""
    h, w = image.shape[:2]
    pixels = torch.from_numpy(image)
    band = max(1, WORK_ELEMENTS // (3 * w))
    narrowed = []
    for r0 in range(0, h, band):
        part = pixels[r0 : r0 + band].to(device).permute(2, 0, 1)[None].float().div_(255)
        narrowed.append(F.interpolate(part, size=(part.shape[2], resolution), mode="bilinear", antialias=True, align_corners=False))
    square = F.interpolate(torch.cat(narrowed, 2), size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return square[0].permute(1, 2, 0).cpu().numpy()


class FastMaskGenerator:
    """SAM2's automatic mask generation on one image (single crop layer), filters decided on the
    low-res logits, with SAM2AutomaticMaskGenerator's meaning for every threshold."""

    def __init__(
        self,
        predictor: SAM2ImagePredictor,
        points_per_side: int,
        points_per_batch: int,
        pred_iou_thresh: float,
        stability_score_thresh: float,
        box_nms_thresh: float,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
    ) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.grid = build_point_grid(points_per_side)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.box_nms_thresh = box_nms_thresh
        self.offset = stability_score_offset
        self.mask_threshold = mask_threshold
        self.device = self.model.device

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @torch.no_grad()
    def _decode(self, points: np.ndarray, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (3B, h, w) float32 and predicted IoUs (3B,) for B grid points (input pixels)."""
        coords = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        coords = self.predictor._transforms.transform_coords(coords, normalize=True, orig_hw=shape)[:, None, :]
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=self.device)
        features = self.predictor._features
        sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        logits, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=features["image_embed"],
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=coords.shape[0] > 1,
            high_res_features=features["high_res_feats"],
        )
        return logits.flatten(0, 1).float(), iou.flatten(0, 1).float()

    def _survivors(self, up: Upsampled, logits: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The candidates of one decoder batch that pass SAM2's predicted-IoU and stability filters
        (IoU of the masks at mask_threshold +/- offset >= thresh), with their exact areas and boxes at
        mask_threshold: (logits, predicted IoUs, areas, boxes). Stability is decided by the low-res
        bounds where they decide it; the rest are counted exactly, their areas and boxes in the same pass."""
        if self.pred_iou_thresh > 0:
            passed = iou > self.pred_iou_thresh
            logits, iou = logits[passed], iou[passed]
        cut = self.mask_threshold
        if self.stability_score_thresh <= 0:
            stats = up.stats(logits, [cut], cut)
            return logits, iou, stats.counts[:, 0], stats.boxes
        high, low = cut + self.offset, cut - self.offset
        lower, upper = up.count_bounds(logits, [high, low])
        (inter_lo, union_lo), (inter_hi, union_hi) = lower.unbind(1), upper.unbind(1)
        t = self.stability_score_thresh
        sure = (union_hi > 0) & (inter_lo >= t * union_hi)
        unsure = ~sure & (union_hi > 0) & ~((union_lo > 0) & (inter_hi < t * union_lo))
        counted = up.stats(logits[unsure], [high, low, cut], cut)
        ratio = counted.counts[:, 0].to(torch.int32) / counted.counts[:, 1].to(torch.int32)  # float32 as SAM2; 0/0 is NaN: dropped
        keep = sure.clone()
        keep[unsure] = ratio >= t
        stable = up.stats(logits[sure], [cut], cut)
        areas = torch.zeros_like(iou, dtype=torch.int64)
        boxes = torch.zeros(len(iou), 4, dtype=torch.int64, device=iou.device)
        areas[unsure], boxes[unsure] = counted.counts[:, 2], counted.boxes
        areas[sure], boxes[sure] = stable.counts[:, 0], stable.boxes
        return logits[keep], iou[keep], areas[keep], boxes[keep]

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> KeptMasks:
        """Kept masks of an RGB uint8 HxWx3 image, largest first."""
        shape = image.shape[:2]
        with self._autocast():
            self.predictor.set_image(model_input(image, self.model.image_size, self.device))
            points = self.grid * np.array(shape)[None, ::-1]
            parts = []
            up = None
            for b0 in range(0, len(points), self.points_per_batch):
                low, iou = self._decode(points[b0 : b0 + self.points_per_batch], shape)
                up = up or Upsampled(shape, low.shape[1:], self.device)
                parts.append(self._survivors(up, low, iou))
        self.predictor.reset_predictor()
        logits, scores, areas, boxes = (torch.cat(p) for p in zip(*parts))
        keep = batched_nms(boxes.float(), scores, torch.zeros_like(scores, dtype=torch.int64), self.box_nms_thresh)
        keep = keep[areas[keep] > 0]  # an empty mask is no object
        order = keep[torch.argsort(areas[keep], descending=True, stable=True)]
        end_exclusive = boxes[order] + torch.tensor([0, 0, 1, 1], device=self.device)
        return KeptMasks(
            up, logits[order], areas[order].cpu().numpy(), end_exclusive.to(torch.int32).cpu().numpy(), self.mask_threshold
        )
