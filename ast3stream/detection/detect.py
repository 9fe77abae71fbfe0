"""Candidates on a difference image: matched-filter footprints (both signs), the paper's cuts, photometry, stamps.

Detection thresholds the matched-filter SNR map of the difference (:mod:`.footprints`: the
Gaussian of the difference PSF, ``diff.stats['psf_fwhm']``, weighted by the per-pixel noise, so
the map is a PSF-fit SNR on the pixel grid) at ``params.prethresh`` times ``diff.stats['errscale']``
(the correlated-noise factor), for ``+D`` and ``-D`` at once. A candidate then needs a PSF-fit
SNR of at least ``params.thresh`` at its sub-pixel centroid: on undersampled (QIP) images
the grid-centred filter loses up to ~40 % of the SNR to the pixel phase, so thresholding the
filtered map itself would lose sources at the limit. Kept are footprints with
``fwhm_min <= FWHM <= fwhm_max_factor x image FWHM``, ``elong_min <= a/b <= elong_max``, ``ISOAREA >= minarea``,
neither touching the border nor holding two significant peaks (sep's TRUNC and MERGED flags), no
mask bit within ``mask_radius_px`` of the centroid and at least ``edge_px`` from the border.
``minarea`` and ``fwhm_min`` are full-resolution quantities (the paper's cuts): on the QIP
lane's ``n x n`` binned images (``binning = n``) they become ``max(1, ceil(minarea / n^2))`` px and
``fwhm_min / n``. Magnitudes come from PSF-fit fluxes (:mod:`.photometry`) on the difference
with the science zero point: ``mag = zp - 2.5 log10 |F|``, errors scaled by ``errscale``.

The image arithmetic runs where ``params.backend`` says (``auto``: CuPy when a GPU is present);
only the thresholded pixels, the photometry boxes and the stamps come back to the host.
"""
from __future__ import annotations

import math

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from ..config import DetectionConfig
from ..subtraction.backend import use_gpu
from .footprints import footprints, matched_snr
from .photometry import psf_flux
from .stamps import boxes, cutouts, to_host

_COLUMNS = ("x", "y", "ra", "dec", "flux", "flux_err", "snr", "mag", "mag_err", "sign",
            "fwhm", "elongation", "isoarea", "flag")


def limiting_magnitude(noise: np.ndarray, mask: np.ndarray, fwhm: float, zp: float, snr: float = 5.0,
                       apcorr: float = 1.0, errscale: float = 1.0) -> float:
    """``zp - 2.5 log10(snr sigma_F)`` with the PSF-fit error ``sigma_F = errscale apcorr sigma
    sqrt(4 pi) s`` of a Gaussian of ``s = FWHM / 2.3548`` on the median unmasked pixel noise ``sigma``
    (of a regular sample of about a million pixels; NumPy or CuPy arrays)."""
    step = max(1, int(math.sqrt(mask.size / 1_000_000)))      # a million pixels are plenty
    noise, mask = to_host(noise[::step, ::step]), to_host(mask[::step, ::step])
    good = (mask == 0) & np.isfinite(noise)
    if not good.any():
        return float("nan")
    sigma_f = float(np.median(noise[good])) * math.sqrt(4 * math.pi) * fwhm / 2.3548 * apcorr * errscale
    return zp - 2.5 * math.log10(snr * sigma_f)


def detect(diff, science_aligned, template, fwhm_px: float, zp: float, params: DetectionConfig, *, lane: str,
           binning: int = 1):
    """Candidate table and ``float32 (N, 4, S, S)`` stamps (difference, template, science, SNR).

    ``fwhm_px`` is the science image FWHM in this lane's pixels (for the FWHM cut); the matched
    filter and the photometry use the difference image's PSF, ``diff.stats['psf_fwhm']`` when
    present, with ``diff.stats['apcorr']`` and ``diff.stats['errscale']`` (module docstring; the PSF-flux
    errors with :meth:`~ast3stream.subtraction.subtract.Difference.errscale_at`, which splits it).
    ``binning`` is the lane's binning (QIP: ``detector.qip_binning``), ``lane`` its name (stamp
    size). ``meta`` holds ``maglim`` (``params.maglim_snr`` sigma), ``lane`` and ``n_raw``.
    """
    dc = params
    if use_gpu(dc.backend):
        import cupy as xp
    else:
        xp = np
    d, noise, mask = (xp.asarray(a) if xp is not np else to_host(a) for a in (diff.diff, diff.noise, diff.mask))
    psf_fwhm = float(diff.stats.get("psf_fwhm", fwhm_px))
    apcorr = float(diff.stats.get("apcorr", 1.0))
    errscale = float(diff.stats.get("errscale", 1.0))
    n = binning
    minarea, fwhm_min = max(1, math.ceil(dc.minarea / n ** 2)), dc.fwhm_min / n
    ny, nx = d.shape
    objs = footprints(matched_snr(d, noise, mask, psf_fwhm), d, mask, dc.prethresh * errscale, minarea)
    a, b = objs["a"], np.maximum(objs["b"], 1e-3)
    fwhm = 2.3548 * np.sqrt((a ** 2 + b ** 2) / 2)
    elong = a / b
    x, y = objs["x"], objs["y"]
    keep = ((fwhm >= fwhm_min) & (fwhm <= dc.fwhm_max_factor * max(fwhm_px, psf_fwhm))
            & (elong >= dc.elong_min) & (elong <= dc.elong_max) & (objs["flag"] == 0)
            & (x >= dc.edge_px) & (x < nx - dc.edge_px) & (y >= dc.edge_px) & (y < ny - dc.edge_px))
    idx = np.flatnonzero(keep)
    r = dc.mask_radius_px
    if len(idx):
        near = to_host(boxes(mask, np.rint(x[idx]).astype(int), np.rint(y[idx]).astype(int), r))
        idx = idx[~near.reshape(len(idx), -1).any(axis=1)]
    flux, ferr = psf_flux(d, noise, x[idx], y[idx], psf_fwhm, mask=mask, apcorr=apcorr)
    ferr = diff.errscale_at(x[idx], y[idx]) * ferr   # the correlated-noise factor at each position
    sign = objs["sign"][idx]
    sel = sign * flux >= dc.thresh * ferr
    k = idx[sel]
    tab = Table({"x": x[k], "y": y[k], "flux": flux[sel], "flux_err": ferr[sel], "sign": objs["sign"][k],
                 "fwhm": fwhm[k], "elongation": elong[k], "isoarea": objs["npix"][k], "flag": objs["flag"][k]})
    ra, dec = WCS(diff.header).all_pix2world(tab["x"], tab["y"], 0) if len(tab) else (np.zeros(0), np.zeros(0))
    tab["ra"], tab["dec"] = ra, dec
    with np.errstate(divide="ignore", invalid="ignore"):
        tab["snr"] = np.abs(tab["flux"]) / tab["flux_err"]
        tab["mag"] = zp - 2.5 * np.log10(np.abs(tab["flux"]))
        tab["mag_err"] = 2.5 / np.log(10) * tab["flux_err"] / np.abs(tab["flux"])
    tab = tab[list(_COLUMNS)]
    size = dc.stamp_qip if lane == "qip" else dc.stamp_dip
    st = cutouts([d, template.data, science_aligned.data, noise, mask], tab["x"], tab["y"], size)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where((st[:, 4] == 0) & (st[:, 3] > 0), st[:, 0] / st[:, 3], 0).astype(np.float32)
    stamps = np.concatenate([st[:, :3], snr[:, None]], axis=1)
    tab.meta.update(maglim=limiting_magnitude(noise, mask, psf_fwhm, zp, dc.maglim_snr, apcorr, errscale), lane=lane,
                    n_raw=len(objs))
    return tab, stamps

