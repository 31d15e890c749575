"""Segmentation memory follows the model and the decoded image, not the input's pixels x SAM2's candidates.

SAM2's own generator upsamples every candidate (3 per grid point) to full size as float32: at 64
points per batch that is 768 bytes per input pixel, 27.6 GB for a 36 MP photo. The fast generator
draws only kept masks, in row bands, so a 36 MP image is scored in the job's segment actor and a
12 MP one in the Serve deployment's scoring function within the bounds below.
"""
import threading
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
from PIL import Image

from rayiqa.config import ScoreConfig, load_config
from rayiqa.pipeline.score_job import run_score

MiB = 1 << 20
SEGMENT = ["segmenter.points_per_side=3", "segmenter.pred_iou_thresh=0", "segmenter.stability_score_thresh=0"]
# The segment actor's peak RSS: Ray's worker + torch + the tiny SAM2 (1.2-1.3 GiB measured in one
# process after a small image) and 12 bytes per pixel of the largest input (decoding holds the
# file, PIL's image and the array: ~3 copies of 3 bytes per pixel; the fast generator adds the
# mask union, 1 byte per pixel). 36 MP: 2.4 GiB. SAM2's generator would ask 27.6 GB more.
PIXELS = 7360 * 4912
ACTOR_BOUND = 2048 * MiB + 12 * PIXELS


def photo_like(path: Path, w: int, h: int) -> Path:
    """A JPEG of w x h with smooth gradients and a few flat shapes (small file, real pixels)."""
    y, x = np.ogrid[:h, :w]
    image = np.empty((h, w, 3), np.uint8)
    image[..., 0] = (x * 255 // w).astype(np.uint8)
    image[..., 1] = (y * 255 // h).astype(np.uint8)
    image[..., 2] = 90
    image[h // 5 : h // 2, w // 6 : w // 2] = (220, 40, 40)
    image[(y - 2 * h // 3) ** 2 + (x - 2 * w // 3) ** 2 < (h // 5) ** 2] = (40, 200, 60)
    Image.fromarray(image).save(path, quality=85)
    return path


class PeakRSS:
    """Peak resident memory (the kernel's VmHWM) of this Ray's worker processes whose title names `stage`."""

    def __init__(self, stage: str) -> None:
        import ray

        self.raylet = str(ray._private.worker.global_worker.node.all_processes["raylet"][0].process.pid)
        self.stage, self.peaks = stage, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    status = (proc / "status").read_text()
                    if status.split("PPid:")[1].split()[0] == self.raylet and self.stage in (proc / "cmdline").read_text():
                        hwm = int(status.split("VmHWM:")[1].split()[0]) * 1024
                        self.peaks[proc.name] = max(self.peaks.get(proc.name, 0), hwm)
                except (OSError, IndexError):
                    continue

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_36_and_12_megapixel_images_are_segmented_and_scored_in_bounded_memory(ray_local, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    big = photo_like(src / "36mp.jpg", 7360, 4912)  # PIXELS: 36.2 MP, 103 MiB decoded
    phone = photo_like(src / "12mp.jpg", 4000, 3000)
    cfg = load_config(ScoreConfig, None, [
        f"input.uri={src}", f"output.uri={tmp_path / 'out'}", *SEGMENT, "method.area_threshold=0.01",
        "mllms=[{preset: tiny, max_pixels: 12544}]", "decode.batch_size=1", "segment.batch_size=1", "score.batch_size=1",
    ])
    with PeakRSS("SegmentStage") as rss:
        summary = run_score(cfg)
    rows = {Path(r["path"]).name: r for r in pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()}
    assert summary.scored == 2 and set(rows) == {big.name, phone.name}
    for name, (w, h) in {big.name: (7360, 4912), phone.name: (4000, 3000)}.items():
        row = rows[name]
        assert row["error_kind"] is None and np.isfinite(row["score"]), row["error"]
        assert (row["width"], row["height"]) == (w, h) and len(row["crop_boxes"]) >= 1
        assert sum(row["crop_areas"]) <= w * h and min(row["crop_areas"]) >= 0.01 * w * h
    assert len(rss.peaks) == 1, rss.peaks  # one segment actor, seen while it ran
    peak = max(rss.peaks.values())
    print(f"segment actor peak RSS {peak / MiB:.0f} MiB (bound {ACTOR_BOUND / MiB:.0f} MiB)")
    assert peak <= ACTOR_BOUND


def test_serve_deployment_segments_a_12_megapixel_upload_in_bounded_memory(tmp_path):
    """The deployment's scoring function in this process (a Serve round trip adds only the upload):
    its segment path grows the process's peak RSS by less than the image itself, then it scores."""
    import resource

    from rayiqa.scorers import build_scorer
    from rayiqa.scorers.llm_iqa import LLMIQAScorerConfig

    cfg = load_config(LLMIQAScorerConfig, None, [*SEGMENT, "method.area_threshold=0.01", "mllms=[{preset: tiny, max_pixels: 12544}]"])
    scorer = build_scorer(cfg)
    scorer.score([np.asarray(Image.open(photo_like(tmp_path / "s.jpg", 400, 300)))])  # one-off allocations
    image = np.asarray(Image.open(photo_like(tmp_path / "12mp.jpg", 4000, 3000)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    boxes, _, _ = scorer.crops(image)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(f"12 MP request, segment path: peak RSS grew {grown / MiB:.0f} MiB (image {image.nbytes / MiB:.0f} MiB)")
    assert len(boxes) >= 1
    assert grown <= image.nbytes  # mask union + remain mask: 2 bytes per pixel; SAM2's generator: 768, 8.6 GiB
    [result] = scorer.score([image])
    assert np.isfinite(result.score) and result.evidence["crop_boxes"] == boxes.tolist()
