"""Aperture photometry and photometric calibration against a reference catalogue.

* eq. 1 -- aperture: diameter ``D = C x median(A_IMAGE)`` of the clean stars, ``C = 6``; the sky is
  the sep background at each source (``bkg`` column), ``sigma_F^2 = N_pix sigma_sky^2 + F``.
  An aperture correction ``median(m(2.5 D) - m(D))`` over bright clean stars turns the aperture
  magnitudes into total ones, so the zero point refers to total flux.
* eq. 2 -- zero point: minimise ``chi^2 = sum (m_ref - m_inst - ZP)^2 / (sigma_ref^2 + sigma_inst^2 +
  sigma_floor^2)``, i.e. the weighted mean, rejecting stars beyond ``zp_clip_sigma`` normalised
  residuals and iterating; ``zp_err = sqrt(1 / sum w) x max(1, sqrt(chi^2_nu))``.
* eq. 3 -- spatial residual: ``dm(x, y) = a0 + a1 x' + a2 y' + a3 x'^2 + a4 x'y' + a5 y'^2`` fitted
  (weighted) to the calibrators' residuals, ``x' = 2x/nx - 1``, ``y' = 2y/ny - 1``, added to every
  source's magnitude.
* limiting magnitude: the 5-sigma point source of PSF-weighted photometry on the sky noise,
  ``F = (s^2 + sqrt(s^4 + 4 s^2 n_eff sigma^2)) / 2`` with ``n_eff = 1 / sum P^2`` of the median
  stamp of the bright clean stars (``maglim``); the same for the aperture (``maglim_aperture``,
  ``n_eff = pi D^2 / 4``).
"""
from __future__ import annotations

import numpy as np
import sep
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ..catalogs.refcat import _unit_vectors, as_refcat
from ..config import PhotometryConfig, SourcesConfig
from ..image import Frame
from ..sources import bit_mask, clean_star_list

_K = 2.5 / np.log(10)


def aperture_fluxes(frame: Frame, x, y, bkg, radius: float, mask_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky-subtracted flux in circles of ``radius`` and the flag of masked pixels inside."""
    data = np.ascontiguousarray(frame.data, dtype=np.float32)
    total, _, flag = sep.sum_circle(data, x, y, radius, mask=bit_mask(frame.mask, mask_bits), subpix=5)
    return total - np.asarray(bkg) * np.pi * radius ** 2, flag


def zero_point(dm: np.ndarray, sigma: np.ndarray, clip: float, max_iter: int) -> tuple[float, float, np.ndarray]:
    """eq. 2: weighted-mean ``ZP`` of ``dm = m_ref - m_inst`` with normalised-residual clipping."""
    keep = np.isfinite(dm) & np.isfinite(sigma)
    zp, err = np.nan, np.nan
    for _ in range(max_iter):
        if keep.sum() < 2:
            break
        w = 1.0 / sigma[keep] ** 2
        zp = float(np.sum(w * dm[keep]) / np.sum(w))
        chi2 = float(np.sum(w * (dm[keep] - zp) ** 2) / max(keep.sum() - 1, 1))
        err = float(np.sqrt(1.0 / np.sum(w)) * max(1.0, np.sqrt(chi2)))
        scale = max(1.0, np.sqrt(chi2))
        new = keep & (np.abs(dm - zp) <= clip * sigma * scale)
        if np.array_equal(new, keep):
            break
        keep = new
    return zp, err, keep


def _poly2(x, y) -> np.ndarray:
    return np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])


def effective_pixels(frame: Frame, stars: Table, half: int = 10) -> float:
    """``n_eff = 1 / sum P^2`` of the median normalised stamp of up to 50 bright clean stars."""
    stamps = []
    ny, nx = frame.shape
    for row in stars[np.argsort(-np.asarray(stars["flux"]))][:50]:
        cx, cy = int(round(row["x"])), int(round(row["y"]))
        if half <= cx < nx - half and half <= cy < ny - half:
            s = frame.data[cy - half:cy + half + 1, cx - half:cx + half + 1] - row["bkg"]
            if s.sum() > 0:
                stamps.append(s / s.sum())
    if len(stamps) < 3:
        return float("nan")
    p = np.median(stamps, axis=0)
    p = np.clip(p, 0, None)
    p /= p.sum()
    return float(1.0 / np.sum(p ** 2))


def limit(n_eff: float, sigma: float, snr: float) -> float:
    """Flux [e-] of a source detected at ``snr`` over ``n_eff`` pixels of sky noise ``sigma``."""
    return (snr ** 2 + np.sqrt(snr ** 4 + 4 * snr ** 2 * n_eff * sigma ** 2)) / 2


def match_sky(wcs: WCS, x, y, ra, dec, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Index into (ra, dec) of the nearest catalogue star within the radius (-1 if none) and separation."""
    sra, sdec = wcs.all_pix2world(x, y, 0)
    tree = cKDTree(_unit_vectors(ra, dec))
    d, j = tree.query(_unit_vectors(sra, sdec), distance_upper_bound=np.radians(radius_arcsec / 3600.0))
    ok = np.isfinite(d)
    return np.where(ok, j, -1), np.degrees(np.where(ok, d, np.nan)) * 3600.0


def calibrate(frame: Frame, sources: Table, refcat, params: PhotometryConfig, *, extraction: SourcesConfig,
              match_radius_arcsec: float) -> tuple[Table, dict]:
    """Calibrated ``mag``, ``mag_err`` for every source; zero point, residual and limits in ``stats``.

    ``extraction`` is the sources section the table was made with (clean-list cuts, mask bits);
    catalogue stars match within ``match_radius_arcsec``."""
    pc = params
    ny, nx = frame.shape
    table = Table(sources, copy=True)
    clean_ids = set(np.asarray(clean_star_list(table, extraction)["id"]).tolist())
    is_clean = np.array([i in clean_ids for i in np.asarray(table["id"])], bool)
    table["clean"] = is_clean
    a_med = float(np.median(table["a"][is_clean])) if is_clean.any() else float(np.median(table["a"]))
    diameter = pc.aperture_factor * a_med
    r = diameter / 2
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    sigma_sky = float(np.median(table["bkg_rms"]))
    flux, aflag = aperture_fluxes(frame, x, y, table["bkg"], r, extraction.mask_bits)
    fluxerr = np.sqrt(np.pi * r ** 2 * sigma_sky ** 2 + np.clip(flux, 0, None))
    big, _ = aperture_fluxes(frame, x, y, table["bkg"], 2.5 * r, extraction.mask_bits)
    snr = flux / fluxerr
    bright = is_clean & (snr > 50) & (big > 0) & (flux > 0)
    apcor = float(np.median(-2.5 * np.log10(big[bright] / flux[bright]))) if bright.sum() >= 3 else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        m_inst = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan) + apcor
        m_err = np.where(flux > 0, _K * fluxerr / flux, np.nan)
    table["flux_aper"], table["fluxerr_aper"], table["aper_flag"] = flux, fluxerr, aflag.astype(np.int32)
    table["mag_aper_inst"] = m_inst

    ref = as_refcat(refcat).table
    j, sep_arcsec = match_sky(WCS(frame.header), x, y, np.asarray(ref["ra"]), np.asarray(ref["dec"]),
                              match_radius_arcsec)
    has = j >= 0
    ref_mag = np.where(has, np.asarray(ref["mag"])[np.where(has, j, 0)], np.nan)
    ref_err = np.where(has, np.asarray(ref["mag_err"])[np.where(has, j, 0)], np.nan)
    table["ref_mag"], table["ref_mag_err"], table["ref_sep"] = ref_mag, ref_err, sep_arcsec
    calib = (is_clean & has & (aflag == 0) & np.isfinite(m_inst) & (ref_mag >= pc.mag_min)
             & (ref_mag <= pc.mag_max))
    dm = ref_mag - m_inst
    sigma = np.sqrt(np.nan_to_num(ref_err, nan=0.05) ** 2 + m_err ** 2 + pc.zp_floor ** 2)
    zp, zp_err, used = zero_point(np.where(calib, dm, np.nan), sigma, pc.zp_clip_sigma, pc.zp_max_iter)
    if not np.isfinite(zp):
        raise ValueError(f"no zero point: {int(calib.sum())} calibration stars")

    xn, yn = 2 * x / nx - 1, 2 * y / ny - 1
    coeffs = np.zeros(6)
    if used.sum() >= pc.residual_min_stars:
        w = 1 / sigma[used]
        coeffs = np.linalg.lstsq(_poly2(xn[used], yn[used]) * w[:, None], (dm[used] - zp) * w, rcond=None)[0]
    resid = _poly2(xn, yn) @ coeffs
    table["mag"] = (m_inst + zp + resid).astype(np.float32)
    table["mag_err"] = m_err.astype(np.float32)
    table["zp_star"] = used

    n_eff = effective_pixels(frame, table[is_clean])
    n_ap = np.pi * r ** 2
    maglim = zp - 2.5 * np.log10(limit(n_eff, sigma_sky, pc.maglim_snr)) if np.isfinite(n_eff) else np.nan
    maglim_ap = zp + apcor - 2.5 * np.log10(limit(n_ap, sigma_sky, pc.maglim_snr))
    stats = {
        "zp": zp, "zp_err": zp_err, "n_zp": int(used.sum()), "n_calib": int(calib.sum()),
        "zp_rms": float(np.std(dm[used] - zp)) if used.any() else np.nan,
        "aperture_px": float(diameter), "apcor": apcor, "maglim": float(maglim),
        "maglim_aperture": float(maglim_ap), "n_eff_px": n_eff, "sky_rms": sigma_sky,
        "residual_coeffs": [float(c) for c in coeffs],
        "residual_range": float(np.ptp(_poly2(*(g.ravel() for g in np.meshgrid([-1.0, 0, 1], [-1.0, 0, 1]))) @ coeffs)),
    }
    return table, stats
