"""Sub-area stars for SFFT's sparse-field mode, chosen with sep (no SExtractor binary).

The template's PSF FWHM is measured first from fitted profiles of isolated stars
(:func:`.psf.measure_psf`: the star/galaxy separation, undersampled PSFs, a reason when
it fails). Sub-area stars come from the template once: isolated (no other detection within
``star_isolation_fwhm`` FWHM, relaxed down to 1 FWHM in crowded fields until
``min_stars_varying`` stars qualify), clean (no masked pixel - saturated cores, bleed trails,
edges - within the sub-area), unsaturated (peak below 70 % of the saturation level), compact
(not a galaxy core: a flux/peak width within 1.5 times the stars'), high SNR. They are
measured at the same positions on the aligned science image, whose FWHM is the median of
profiles fitted to them there, and are prior-banned when their flux ratio
``F_sci / F_ref`` or their centroid shift (``sep.winpos``) deviates from the median by
more than ``ban_sigma`` times the star's own error combined with a systematic floor
(variables, transients on or beside galaxies, residual cosmics) - the role of SFFT's
``PriorBanMask`` (Hu et al. 2022, sect. 3.3).
"""
from __future__ import annotations

import numpy as np
import sep
from astropy.table import Table
from scipy.spatial import cKDTree

from ..detection.stamps import array_module, boxes, inside, mosaic, to_host
from .psf import detect, fit_fwhm, measure_psf


def _radius(fwhm: float) -> float:
    return max(2.5 * fwhm, 4.0)


def _clean(mask: np.ndarray, x, y, r: int) -> np.ndarray:
    """True where the ``(2r+1)^2`` box around each position is inside and unmasked."""
    ny, nx = mask.shape
    ok = np.zeros(len(x), bool)
    for k, (xi, yi) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        if r <= xi < nx - r and r <= yi < ny - r:
            ok[k] = not mask[yi - r:yi + r + 1, xi - r:xi + r + 1].any()
    return ok


def measure(data_sub: np.ndarray, mask: np.ndarray, rms: np.ndarray | float, x, y, fwhm: float):
    """Aperture flux and error (radius ``2.5 FWHM``) and the Gaussian-equivalent FWHM
    ``2.3548 sqrt(F / (2 pi peak))`` (peak = brightest of the 3x3 pixels) at fixed positions."""
    data = np.ascontiguousarray(data_sub, np.float32)
    err = rms if np.isscalar(rms) else np.ascontiguousarray(rms, np.float32)
    flux, ferr, _ = sep.sum_circle(data, x, y, _radius(fwhm), err=err, mask=np.ascontiguousarray(mask))
    ny, nx = data.shape
    cx = np.clip(np.rint(x).astype(int), 1, nx - 2)
    cy = np.clip(np.rint(y).astype(int), 1, ny - 2)
    peak = np.max([data[cy + dy, cx + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fw = 2.3548 * np.sqrt(flux / (2 * np.pi * peak))
    return flux, ferr, fw


def select_stars(data_sub: np.ndarray, mask: np.ndarray, rms: np.ndarray, cfg, saturation: float | None = None) -> Table:
    """Sub-area stars of a background-subtracted image (module docstring).

    Returns a Table ``x, y, xwin, ywin, flux, flux_err, fwhm`` sorted by decreasing flux, with the
    image's fitted PSF FWHM in ``meta['fwhm']`` (and ``meta['psf']``, the :class:`.psf.PSF`).
    Raises :class:`.psf.PSFError` when the PSF cannot be measured.
    """
    sc = cfg.subtraction
    data = np.ascontiguousarray(data_sub, np.float32)
    mask = np.ascontiguousarray(mask, bool)
    rms = np.ascontiguousarray(rms, np.float32)
    objs = detect(data, rms, mask, 5.0)
    psf = measure_psf(data, mask, rms, saturation=saturation, snr_min=max(sc.star_snr_min, 20.0), min_stars=3,
                      thresh=5.0, objects=objs)
    fwhm_med = psf.fwhm
    empty = Table(dict(x=[], y=[], xwin=[], ywin=[], flux=[], flux_err=[], fwhm=[]), meta={"fwhm": fwhm_med, "psf": psf})
    objs = objs[np.isfinite(objs["a"]) & np.isfinite(objs["b"]) & (objs["b"] > 0)]
    if len(objs) < 3:
        return empty
    flux, ferr, fwhm = measure(data, mask, rms, objs["x"], objs["y"], fwhm_med)
    good = (objs["flag"] == 0) & (flux / ferr > sc.star_snr_min) & np.isfinite(fwhm)
    good &= objs["peak"] < 0.7 * psf.saturation
    # compact: flux/peak width of the PSF stars sets the scale (it differs from the fitted FWHM)
    near = cKDTree(np.c_[objs["x"], objs["y"]]).query(np.c_[psf.stars["x"], psf.stars["y"]])[1]
    scale = float(np.nanmedian(fwhm[near])) if np.isfinite(fwhm[near]).any() else fwhm_med
    good &= fwhm < 1.5 * scale
    d, _ = cKDTree(np.c_[objs["x"], objs["y"]]).query(np.c_[objs["x"], objs["y"]], k=2)
    r_clean = int(np.ceil(_radius(fwhm_med)))
    for iso in sorted({sc.star_isolation_fwhm, 1.5, 1.0}, reverse=True):
        idx = np.flatnonzero(good & (d[:, 1] > iso * fwhm_med))
        idx = idx[_clean(mask, objs["x"][idx], objs["y"][idx], r_clean)]
        if idx.size >= sc.min_stars_varying or iso <= 1.0:
            break
    idx = idx[np.argsort(-flux[idx])]
    if idx.size == 0:
        return empty
    xw, yw, _ = sep.winpos(data, objs["x"][idx], objs["y"][idx], np.full(len(idx), fwhm_med / 2.3548))
    return Table(dict(x=objs["x"][idx], y=objs["y"][idx], xwin=xw, ywin=yw, flux=flux[idx], flux_err=ferr[idx],
                      fwhm=fwhm[idx]), meta={"fwhm": fwhm_med, "psf": psf, "isolation_fwhm": iso})


def pair_stars(stars: Table, sci_sub, sci_mask, sci_rms, cfg) -> Table:
    """Measure template ``stars`` on the aligned science image and flag the usable ones.

    Adds ``flux_sci``, ``flux_sci_err``, ``fwhm_sci``, ``ratio``, the residual centroid shift
    ``dx, dy`` (median of the usable ones removed) with its error ``shift_err``, and boolean ``use``
    (clean and SNR-qualified in the science image, not prior-banned); ``meta['fwhm_sci']``
    and ``meta['ratio']`` (median flux ratio) are set. The images (NumPy or CuPy) are measured
    on a :func:`~ast3stream.detection.stamps.mosaic` of boxes around the stars.
    """
    sc = cfg.subtraction
    out = stars.copy()
    if len(stars) == 0:
        out.meta.update(fwhm_sci=np.nan, ratio=np.nan)
        for name in ("flux_sci", "flux_sci_err", "fwhm_sci", "ratio", "dx", "dy", "shift_err"):
            out[name] = np.zeros(0)
        out["use"] = np.zeros(0, bool)
        return out
    r = int(np.ceil(_radius(stars.meta["fwhm"])))
    (sci_sub, sci_mask, sci_rms), outside, x, y = mosaic([sci_sub, sci_mask, sci_rms], stars["x"], stars["y"], r + 2)
    sci_mask = (sci_mask != 0) | outside
    f, fe, fw = measure(sci_sub, sci_mask, sci_rms, x, y, stars.meta["fwhm"])
    ok = _clean(sci_mask, x, y, r)
    ok &= f / fe > sc.star_snr_min
    ratio = f / np.asarray(stars["flux"])
    fwhm = float(stars.meta["fwhm"])
    sig_w = np.full(len(x), fwhm / 2.3548)
    xs, ys, _ = sep.winpos(np.ascontiguousarray(sci_sub, np.float32), x, y, sig_w)
    xs, ys = xs - x + np.asarray(stars["x"]), ys - y + np.asarray(stars["y"])  # back to the image
    xt, yt = np.asarray(stars["xwin"]), np.asarray(stars["ywin"])
    if ok.sum() >= 5:
        med = np.median(ratio[ok])
        err = np.abs(ratio) * np.hypot(fe / f, np.asarray(stars["flux_err"]) / np.asarray(stars["flux"]))
        ok &= np.abs(ratio / med - 1) <= sc.ban_sigma * np.hypot(sc.ban_ratio_floor, err / abs(med))
        dx, dy = xs - xt, ys - yt
        shift = np.hypot(dx - np.median(dx[ok]), dy - np.median(dy[ok]))
        err = fwhm / np.minimum(f / fe, np.asarray(stars["flux"] / stars["flux_err"]))
        ok &= shift <= sc.ban_sigma * np.hypot(sc.ban_shift_floor_px, err)
    out["flux_sci"], out["flux_sci_err"], out["fwhm_sci"], out["ratio"], out["use"] = f, fe, fw, ratio, ok
    # centroid shift left after alignment (median removed) and its statistical error [px]
    dx, dy = xs - xt, ys - yt
    if ok.any():
        dx, dy = dx - np.median(dx[ok]), dy - np.median(dy[ok])
    out["dx"], out["dy"] = dx, dy
    out["shift_err"] = fwhm / np.minimum(f / fe, np.asarray(stars["flux"] / stars["flux_err"]))
    # the science FWHM: profiles fitted (as for the template) to the 60 brightest usable stars
    k = np.flatnonzero(ok)[:60]
    fit = fit_fwhm(sci_sub, sci_rms, x[k], y[k], fwhm, bad=sci_mask)[0] if k.size else np.zeros(0)
    fit = fit[np.isfinite(fit)]
    out.meta["fwhm_sci"] = float(np.median(fit)) if fit.size else np.nan
    out.meta["ratio"] = float(np.median(ratio[ok])) if ok.sum() else np.nan
    return out


def subarea_labels(shape, x, y, radius: float, xp=np):
    """int32 image (NumPy or CuPy ``xp``): ``k + 1`` within ``radius`` of position ``k`` (later
    ones win), else 0."""
    ny, nx = shape
    out = xp.zeros(ny * nx, np.int32)
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return out.reshape(shape)
    r = int(np.ceil(radius))
    o = np.arange(-r, r + 1)
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    xx, yy = (cx[:, None] + o)[:, None, :], (cy[:, None] + o)[:, :, None]
    disk = (xx - x[:, None, None]) ** 2 + (yy - y[:, None, None]) ** 2 <= radius ** 2
    disk &= (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
    idx = (yy * nx + xx)[disk]
    lab = np.broadcast_to(np.arange(1, len(x) + 1, dtype=np.int32)[:, None, None], disk.shape)[disk]
    idx, first = np.unique(idx[::-1], return_index=True)  # the last (largest) label of each pixel
    out[xp.asarray(idx)] = xp.asarray(lab[::-1][first])
    return out.reshape(shape)


def local_sky(data, bad, x, y, r_in: float, r_out: float) -> np.ndarray:
    """Median of unmasked pixels in the annulus ``r_in <= r < r_out`` around each position
    (0 where none or the annulus leaves the image): the residual sky pedestal under each
    sub-area. ``data`` and ``bad`` may be CuPy arrays (the medians are taken on the GPU)."""
    xp = array_module(data)
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.zeros(len(x))
    r = int(np.ceil(r_out))
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    k = np.flatnonzero(inside(data.shape, cx, cy, r))
    if k.size == 0:
        return out
    o = np.arange(-r, r + 1)
    rr = np.hypot((cx[k, None] + o - x[k, None])[:, None, :], (cy[k, None] + o - y[k, None])[:, :, None])
    sel = xp.asarray((rr >= r_in) & (rr < r_out)) & ~boxes(bad, cx[k], cy[k], r)
    vals = xp.where(sel, boxes(data, cx[k], cy[k], r), xp.nan).reshape(k.size, -1)
    n = to_host(sel.reshape(k.size, -1).sum(axis=1))
    med = to_host(xp.nanmedian(vals[xp.asarray(n > 10)], axis=1)) if (n > 10).any() else np.zeros(0)
    out[k[n > 10]] = med
    return out
