"""Full-reference labels for synthetic sets: SSIM, PSNR (scikit-image) and GMSD.

Images are float RGB arrays in [0, 1], shape (H, W, 3). Each metric is registered with its
direction and native range so a synthetic set can turn it into a MOS- or DMOS-like "requirement".
MS-SSIM and LPIPS are left out: no installed library provides them (see the dataset-layer notes).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rayiqa.data.rows import ScoreType

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; labels are capped here
GMSD_C = 170.0 / 255.0**2  # GMSD's stability constant (170 on the 0-255 scale)
_PREWITT_X = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0


def ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Mean SSIM over the RGB channels, with Wang et al.'s settings (Gaussian window sigma 1.5)."""
    return float(
        structural_similarity(
            reference, distorted, channel_axis=-1, data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
    )


def psnr(reference: np.ndarray, distorted: np.ndarray) -> float:
    """PSNR in dB over all RGB values, capped at `PSNR_CAP_DB`."""
    if np.array_equal(reference, distorted):
        return PSNR_CAP_DB
    return float(min(peak_signal_noise_ratio(reference, distorted, data_range=1.0), PSNR_CAP_DB))


def _gradient_magnitude(luma: np.ndarray) -> np.ndarray:
    return np.hypot(ndimage.correlate(luma, _PREWITT_X), ndimage.correlate(luma, _PREWITT_X.T))


def gms_map(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
    """GMSD's gradient magnitude similarity map, at half resolution: luma, 2x2 mean filter and
    downsampling by 2, Prewitt gradient magnitudes m_r and m_d, GMS = (2 m_r m_d + c) / (m_r^2 + m_d^2 + c)."""
    maps = []
    for image in (reference, distorted):
        luma = ndimage.uniform_filter(rgb2gray(image), size=2, mode="nearest")[::2, ::2]
        maps.append(_gradient_magnitude(luma))
    m_r, m_d = maps
    return (2.0 * m_r * m_d + GMSD_C) / (m_r**2 + m_d**2 + GMSD_C)


def gmsd(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Gradient Magnitude Similarity Deviation (Xue et al., TIP 2014): the standard deviation of the
    GMS map; 0 = identical, higher = worse."""
    return float(gms_map(reference, distorted).std())


def gmsd_cells(reference: np.ndarray, distorted: np.ndarray, cell: int) -> np.ndarray:
    """GMSD of each cell x cell block (the GMS map's standard deviation within it; `cell` even): a local
    quality map whose cells line up with a vision tower's merged tokens when the sides are multiples of `cell`."""
    gms = gms_map(reference, distorted)
    half = cell // 2
    h, w = gms.shape[0] // half, gms.shape[1] // half
    return gms[: h * half, : w * half].reshape(h, half, w, half).std(axis=(1, 3))


@dataclass(frozen=True)
class FRMetric:
    """A full-reference metric as a quality requirement: its function, direction and native range."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    score_type: ScoreType
    score_range: tuple[float, float]


FR_METRICS: dict[str, FRMetric] = {
    m.name: m
    for m in (
        FRMetric("ssim", ssim, "MOS", (0.0, 1.0)),
        FRMetric("psnr", psnr, "MOS", (0.0, PSNR_CAP_DB)),
        FRMetric("gmsd", gmsd, "DMOS", (0.0, 0.5)),  # std of a map in (0, 1] is at most 0.5
    )
}
