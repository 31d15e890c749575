"""Dead-leaves images: occluding discs with power-law radii, the standard synthetic stand-in for
natural-image statistics (1/f spectrum, sharp edges at every scale) used to measure camera texture
loss. They give the tiny-iqa trainer unlimited, licence-free content besides the packaged photographs.
"""
from __future__ import annotations

import numpy as np
from skimage import draw, filters

R_MIN = 1.5  # px: the smallest disc radius


def radius(u: float, r_max: float) -> float:
    """A radius drawn with density ∝ r^-3 on [R_MIN, r_max] (scale invariance), by inverting its CDF at u."""
    return (R_MIN**-2 - u * (R_MIN**-2 - r_max**-2)) ** -0.5


def dead_leaves(height: int, width: int, rng: np.random.Generator, max_discs: int = 4000) -> np.ndarray:
    """A uint8 RGB image covered front to back by discs around one random palette, lightly anti-aliased."""
    image = np.zeros((height, width, 3))
    covered = np.zeros((height, width), dtype=bool)
    r_max = max(height, width) / 2
    base = rng.uniform(0, 1, 3)
    for _ in range(max_discs):
        r = radius(float(rng.uniform()), r_max)
        rr, cc = draw.disk((rng.uniform(-r, height + r), rng.uniform(-r, width + r)), r, shape=(height, width))
        free = ~covered[rr, cc]
        if free.any():
            colour = base + rng.normal(0, 0.3, 3) if rng.uniform() < 0.7 else rng.uniform(0, 1, 3)
            image[rr[free], cc[free]] = np.clip(colour, 0, 1)
            covered[rr[free], cc[free]] = True
            if covered.all():
                break
    image = filters.gaussian(image, sigma=rng.uniform(0.4, 0.9), channel_axis=-1)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
