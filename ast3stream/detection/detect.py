"""Candidates on a difference image: sep detection (both signs), the paper's cuts, photometry, stamps.

Detection runs ``sep.extract`` on ``+D`` and ``-D`` with the per-pixel noise as error and
a matched filter, the Gaussian of the difference PSF (``diff.stats['psf_fwhm']``), so that the
filtered image is a PSF-fit SNR map on the pixel grid, thresholded at ``cfg.detection.prethresh``
times ``diff.stats['errscale']`` (the correlated-noise factor). A candidate then needs a PSF-fit
SNR of at least ``cfg.detection.thresh`` at its sub-pixel centroid: on undersampled (QIP) images
the grid-centred filter loses up to ~40 % of the SNR to the pixel phase, so thresholding the
filtered image itself would lose sources at the limit. Kept are sources with
``fwhm_min <= FWHM <= fwhm_max_factor x image FWHM``, ``elong_min <= a/b <= elong_max``, ``ISOAREA >= minarea``, no sep truncation/merge flag, no
mask bit within ``mask_radius_px`` of the centroid and at least ``edge_px`` from the border.
``minarea`` and ``fwhm_min`` are full-resolution quantities (the paper's cuts): on the QIP
lane's ``n x n`` binned images they become ``max(1, ceil(minarea / n^2))`` px and
``fwhm_min / n``. sep's CLEAN step is off: with a matched filter it deletes isolated
point sources as "wings" of their neighbours. Magnitudes come from PSF-fit fluxes (:mod:`.photometry`) on the difference
with the science zero point: ``mag = zp - 2.5 log10 |F|``, errors scaled by ``errscale``.
"""
from __future__ import annotations

import math

import numpy as np
import sep
from astropy.table import Table
from astropy.wcs import WCS

from .photometry import gaussian_psf, psf_flux
from .stamps import cutouts

_COLUMNS = ("x", "y", "ra", "dec", "flux", "flux_err", "snr", "mag", "mag_err", "sign",
            "fwhm", "elongation", "isoarea", "flag")


def limiting_magnitude(noise: np.ndarray, mask: np.ndarray, fwhm: float, zp: float, snr: float = 5.0,
                       apcorr: float = 1.0, errscale: float = 1.0) -> float:
    """``zp - 2.5 log10(snr sigma_F)`` with the PSF-fit error ``sigma_F = errscale apcorr sigma
    sqrt(4 pi) s`` of a Gaussian of ``s = FWHM / 2.3548`` on the median unmasked pixel noise ``sigma``."""
    good = (mask == 0) & np.isfinite(noise)
    if not good.any():
        return float("nan")
    sigma_f = float(np.median(noise[good][:: max(1, good.sum() // 1_000_000)])) \
        * math.sqrt(4 * math.pi) * fwhm / 2.3548 * apcorr * errscale
    return zp - 2.5 * math.log10(snr * sigma_f)


def _extract(data, noise, mask, thresh: float, kernel: np.ndarray, minarea: int, sign: int) -> np.ndarray:
    sep.set_extract_pixstack(max(300_000, data.size // 10))
    return sep.extract(np.ascontiguousarray(sign * data, np.float32), thresh,
                       err=np.ascontiguousarray(noise, np.float32), mask=np.ascontiguousarray(mask != 0),
                       minarea=minarea, filter_kernel=kernel, filter_type="matched", clean=False)


def detect(diff, science_aligned, template, fwhm_px: float, zp: float, cfg, lane: str):
    """Candidate table and ``float32 (N, 4, S, S)`` stamps (difference, template, science, SNR).

    ``fwhm_px`` is the science image FWHM (for the FWHM cut); the matched filter and the
    photometry use the difference image's PSF, ``diff.stats['psf_fwhm']`` when present, with
    ``diff.stats['apcorr']`` and ``diff.stats['errscale']`` (module docstring).
    ``meta`` holds ``maglim`` (``cfg.detection.maglim_snr`` sigma), ``lane`` and ``n_raw``.
    """
    dc = cfg.detection
    d, noise, mask = diff.diff, diff.noise, diff.mask
    psf_fwhm = float(diff.stats.get("psf_fwhm", fwhm_px))
    apcorr = float(diff.stats.get("apcorr", 1.0))
    errscale = float(diff.stats.get("errscale", 1.0))
    n = cfg.detector.qip_binning if lane == "qip" else 1
    minarea, fwhm_min = max(1, math.ceil(dc.minarea / n ** 2)), dc.fwhm_min / n
    kernel = gaussian_psf(0.0, 0.0, psf_fwhm, int(math.ceil(1.5 * psf_fwhm)))
    snr_img = diff.snr
    ny, nx = d.shape
    rows = []
    n_raw = 0
    for sign in (1, -1):
        objs = _extract(d, noise, mask, dc.prethresh * errscale, kernel, minarea, sign)
        n_raw += len(objs)
        if len(objs) == 0:
            continue
        a, b = objs["a"], np.maximum(objs["b"], 1e-3)
        fwhm = 2.3548 * np.sqrt((a ** 2 + b ** 2) / 2)
        elong = a / b
        x, y = objs["x"], objs["y"]
        keep = ((fwhm >= fwhm_min) & (fwhm <= dc.fwhm_max_factor * max(fwhm_px, psf_fwhm))
                & (elong >= dc.elong_min) & (elong <= dc.elong_max) & (objs["npix"] >= minarea)
                & ((objs["flag"] & (sep.OBJ_TRUNC | sep.OBJ_MERGED)) == 0)
                & (x >= dc.edge_px) & (x < nx - dc.edge_px) & (y >= dc.edge_px) & (y < ny - dc.edge_px))
        r = dc.mask_radius_px
        for k in np.flatnonzero(keep):
            cx, cy = int(round(x[k])), int(round(y[k]))
            if mask[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1].any():
                keep[k] = False
        idx = np.flatnonzero(keep)
        flux, ferr = psf_flux(d, noise, x[idx], y[idx], psf_fwhm, mask=mask, apcorr=apcorr)
        ferr = errscale * ferr
        for j in np.flatnonzero(sign * flux >= dc.thresh * ferr):
            k = idx[j]
            rows.append((x[k], y[k], flux[j], ferr[j], sign, fwhm[k], elong[k], int(objs["npix"][k]),
                         int(objs["flag"][k])))
    names = ("x", "y", "flux", "flux_err", "sign", "fwhm", "elongation", "isoarea", "flag")
    tab = Table(rows=rows, names=names, dtype=(float, float, float, float, int, float, float, int, int)) \
        if rows else Table(names=names, dtype=(float, float, float, float, int, float, float, int, int))
    ra, dec = WCS(diff.header).all_pix2world(tab["x"], tab["y"], 0) if len(tab) else (np.zeros(0), np.zeros(0))
    tab["ra"], tab["dec"] = ra, dec
    with np.errstate(divide="ignore", invalid="ignore"):
        tab["snr"] = np.abs(tab["flux"]) / tab["flux_err"]
        tab["mag"] = zp - 2.5 * np.log10(np.abs(tab["flux"]))
        tab["mag_err"] = 2.5 / np.log(10) * tab["flux_err"] / np.abs(tab["flux"])
    tab = tab[list(_COLUMNS)]
    size = dc.stamp_qip if lane == "qip" else dc.stamp_dip
    stamps = cutouts([d, template.data, science_aligned.data, snr_img], tab["x"], tab["y"], size)
    tab.meta.update(maglim=limiting_magnitude(noise, mask, psf_fwhm, zp, dc.maglim_snr, apcorr, errscale), lane=lane,
                    n_raw=n_raw)
    return tab, stamps
