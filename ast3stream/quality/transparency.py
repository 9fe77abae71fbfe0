"""Transparency map: the extinction [mag] that catalogue stars show, on the thumbnail's grid.

Each calibration star (clean, unflagged aperture, catalogue magnitude in
``[photometry.mag_min, photometry.mag_max]``) gives ``A = zp_clear - (m_ref - m_inst)``, where
``m_inst`` is its aperture-corrected instrumental magnitude and ``zp_clear`` the clear-sky zero point
at the frame's exposure time and airmass (:func:`clear_zero_point`). ``A`` is 0 under a clear sky
and the cloud's extinction at the star otherwise: a grey 0.15 mag veil that a zscale thumbnail
normalises away is a 0.15 mag offset here.

The map is a Gaussian-kernel (Nadaraya-Watson) mean on a ``quality.transparency_grid`` square
grid spanning the thumbnail (:func:`~ast3stream.quality.thumbnail.thumbnail_box`), in thumbnail
units, with a kernel of ``sigma = sqrt(6 / (2 pi n))`` (about six stars' weight per node for ``n``
stars; clipped to 1/32-1/3 of the thumbnail), after one pass rejecting stars more than
``max(3 sigma_MAD, 0.1 mag)`` from a first such mean at the stars (variables, blends; with more than
1000 stars, a fixed random 1000 of them make that first mean). Nodes with less than half a star's
weight are NaN.
"""
from __future__ import annotations

import numpy as np

from ..config import DetectorConfig, PhotometryConfig, QualityConfig
from .thumbnail import thumbnail_box

_MAX_REF = 1000     #: stars (a fixed random subset beyond) in the first pass that finds the outliers


def clear_zero_point(header, detector: DetectorConfig, extinction_k: float) -> float:
    """Mag giving 1 e- in the exposure under a clear sky: ``detector.zeropoint`` scaled to
    ``EXPTIME``, less ``extinction_k (AIRMASS - 1)`` when the header has an airmass."""
    det = detector
    zp = det.zeropoint + 2.5 * np.log10(float(header.get("EXPTIME", det.exptime)) / det.exptime)
    airmass = header.get("AIRMASS")
    return float(zp - extinction_k * (float(airmass) - 1) if airmass is not None else zp)


def star_extinction(sources, zp_clear: float, photometry: PhotometryConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x``, ``y`` [px] and extinction ``A`` [mag] of the calibration stars in a
    :func:`ast3stream.photometry.calibrate` table (empty arrays without its columns)."""
    need = ("x", "y", "ref_mag", "mag_aper_inst")
    if sources is None or not all(c in sources.colnames for c in need):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    pc = photometry
    ref = np.asarray(sources["ref_mag"], float)
    a = zp_clear - (ref - np.asarray(sources["mag_aper_inst"], float))
    ok = np.isfinite(a) & (ref >= pc.mag_min) & (ref <= pc.mag_max)
    if "clean" in sources.colnames:
        ok &= np.asarray(sources["clean"], bool)
    if "aper_flag" in sources.colnames:
        ok &= np.asarray(sources["aper_flag"]) == 0
    return np.asarray(sources["x"], float)[ok], np.asarray(sources["y"], float)[ok], a[ok]


def _smooth(u, v, a, gu, gv, sigma):
    """Kernel-weighted mean of ``a`` at points (gu, gv) and the weight sum there (in chunks of 4M pairs)."""
    value, weight = np.empty(len(gu)), np.empty(len(gu))
    step = max(1, 2**22 // max(len(u), 1))
    for i in range(0, len(gu), step):
        w = np.exp(-((gu[i:i + step, None] - u) ** 2 + (gv[i:i + step, None] - v) ** 2) / (2 * sigma**2))
        weight[i:i + step], value[i:i + step] = w.sum(1), w @ a
    with np.errstate(invalid="ignore", divide="ignore"):
        return value / weight, weight


def transparency_map(sources, shape: tuple[int, int], zp_clear: float, quality: QualityConfig,
                     photometry: PhotometryConfig) -> np.ndarray:
    """Float32 ``(grid, grid)`` extinction map [mag] over the thumbnail, ``[y, x]``; NaN where no stars."""
    qc = quality
    grid = qc.transparency_grid
    x, y, a = star_extinction(sources, zp_clear, photometry)
    if len(a) == 0:
        return np.full((grid, grid), np.nan, np.float32)
    oy, ox, fy, fx = thumbnail_box(shape, qc.thumbnail_size)
    u, v = (x + 0.5 - ox) / (fx * qc.thumbnail_size), (y + 0.5 - oy) / (fy * qc.thumbnail_size)
    sigma = float(np.clip(np.sqrt(6 / (2 * np.pi * len(a))), 1 / 32, 1 / 3))
    ref = np.random.default_rng(0).choice(len(a), _MAX_REF, replace=False) if len(a) > _MAX_REF else slice(None)
    fit, _ = _smooth(u[ref], v[ref], a[ref], u, v, sigma)
    r = a - fit
    keep = np.abs(r - np.median(r)) <= max(3 * 1.4826 * np.median(np.abs(r - np.median(r))), 0.1)
    g = (np.arange(grid) + 0.5) / grid
    gv, gu = (c.ravel() for c in np.meshgrid(g, g, indexing="ij"))
    value, weight = _smooth(u[keep], v[keep], a[keep], gu, gv, sigma)
    return np.where(weight >= 0.5, value, np.nan).reshape(grid, grid).astype(np.float32)
