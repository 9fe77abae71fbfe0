"""Sky brightness, extinction and clouds.

The clear-sky zero point is ``zp_clear = zeropoint - k (X - 1)``. Clouds are a smooth random
extinction field A(x, y) [mag]: a sum of six long-wavelength plane waves around a mean, clipped to
``[0, cloud_max_mag]``; a source at (x, y) gets ``zp_clear - A(x, y)``. The sky level is left
unattenuated (scattered light roughly compensates).
"""
from __future__ import annotations

import math

import numpy as np

from ..config import DetectorConfig, SimulationConfig


def sky_electrons(sky_mag: float, zp: float, pixel_scale: float) -> float:
    """Sky e-/px from a surface brightness [mag/arcsec^2]: 10^(-0.4 (mu - 5 log10 p - zp))."""
    return 10 ** (-0.4 * (sky_mag - 5 * math.log10(pixel_scale) - zp))


def zp_clear(det: DetectorConfig, sim: SimulationConfig, airmass: float) -> float:
    return det.zeropoint - sim.extinction_k * (airmass - 1)


def cloud_extinction(x, y, nx: int, ny: int, mean: float, key, max_mag: float) -> np.ndarray:
    """Extinction [mag] at pixel positions for a cloud pattern of the given mean and random ``key``."""
    if mean <= 0:
        return np.zeros(np.shape(x))
    rng = np.random.default_rng(key)
    size = max(nx, ny)
    a = np.zeros(np.shape(x))
    for _ in range(6):
        k = rng.uniform(0.5, 2.5) * 2 * np.pi / size
        phi = rng.uniform(0, 2 * np.pi)
        a += np.cos(k * (np.cos(phi) * np.asarray(x) + np.sin(phi) * np.asarray(y)) + rng.uniform(0, 2 * np.pi))
    return np.clip(mean * (1 + 0.4 * a / np.sqrt(3)), 0, max_mag)


def mean_extinction(nx: int, ny: int, mean: float, key, max_mag: float) -> float:
    yy, xx = np.mgrid[0:ny:complex(0, 40), 0:nx:complex(0, 40)]
    return float(np.mean(cloud_extinction(xx, yy, nx, ny, mean, key, max_mag)))
