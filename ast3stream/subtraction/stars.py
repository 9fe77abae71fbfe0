"""Sub-area stars for SFFT's sparse-field mode, chosen with sep (no SExtractor binary).

Stars come from the template once (isolated, clean, high SNR), are measured at the
same positions on the aligned science image, and are prior-banned when their flux ratio
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


def select_stars(data_sub: np.ndarray, mask: np.ndarray, rms: np.ndarray, cfg) -> Table:
    """Isolated, unmasked, high-SNR sources of a background-subtracted image.

    Returns a Table ``x, y, xwin, ywin, flux, flux_err, fwhm`` sorted by decreasing flux, with the
    image's median star FWHM in ``meta['fwhm']``.
    """
    sc = cfg.subtraction
    data = np.ascontiguousarray(data_sub, np.float32)
    mask = np.ascontiguousarray(mask, bool)
    rms = np.ascontiguousarray(rms, np.float32)
    objs = sep.extract(data, 5.0, err=rms, mask=mask, minarea=5, deblend_cont=0.005)
    objs = objs[np.isfinite(objs["a"]) & np.isfinite(objs["b"]) & (objs["b"] > 0)]
    if len(objs) < 3:
        return Table(dict(x=[], y=[], xwin=[], ywin=[], flux=[], flux_err=[], fwhm=[]), meta={"fwhm": np.nan})
    flux, ferr, fwhm = measure(data, mask, rms, objs["x"], objs["y"], 2.3548 * np.median(objs["a"]))
    good = (objs["flag"] == 0) & (flux / ferr > sc.star_snr_min) & np.isfinite(fwhm)
    if good.sum() < 3:
        return Table(dict(x=[], y=[], xwin=[], ywin=[], flux=[], flux_err=[], fwhm=[]), meta={"fwhm": np.nan})
    fwhm_med = float(np.median(fwhm[good]))
    flux, ferr, fwhm = measure(data, mask, rms, objs["x"], objs["y"], fwhm_med)
    d, _ = cKDTree(np.c_[objs["x"], objs["y"]]).query(np.c_[objs["x"], objs["y"]], k=2)
    keep = good & (d[:, 1] > sc.star_isolation_fwhm * fwhm_med) & (flux / ferr > sc.star_snr_min)
    idx = np.flatnonzero(keep)
    idx = idx[_clean(mask, objs["x"][idx], objs["y"][idx], int(np.ceil(_radius(fwhm_med))))]
    idx = idx[np.argsort(-flux[idx])]
    xw, yw, _ = sep.winpos(data, objs["x"][idx], objs["y"][idx], np.full(len(idx), fwhm_med / 2.3548))
    compact = np.abs(fwhm[idx] / fwhm_med - 1) < 0.3
    fwhm_med = float(np.median(fwhm[idx][compact])) if compact.sum() >= 3 else fwhm_med
    return Table(dict(x=objs["x"][idx], y=objs["y"][idx], xwin=xw, ywin=yw, flux=flux[idx], flux_err=ferr[idx],
                      fwhm=fwhm[idx]), meta={"fwhm": fwhm_med})


def pair_stars(stars: Table, sci_sub: np.ndarray, sci_mask: np.ndarray, sci_rms, cfg) -> Table:
    """Measure template ``stars`` on the aligned science image and flag the usable ones.

    Adds ``flux_sci``, ``flux_sci_err``, ``fwhm_sci``, ``ratio`` and boolean ``use``
    (clean and SNR-qualified in the science image, not prior-banned); ``meta['fwhm_sci']``
    and ``meta['ratio']`` (median flux ratio) are set.
    """
    sc = cfg.subtraction
    out = stars.copy()
    if len(stars) == 0:
        out.meta.update(fwhm_sci=np.nan, ratio=np.nan)
        for name in ("flux_sci", "flux_sci_err", "fwhm_sci", "ratio"):
            out[name] = np.zeros(0)
        out["use"] = np.zeros(0, bool)
        return out
    x, y = np.asarray(stars["x"]), np.asarray(stars["y"])
    f, fe, fw = measure(sci_sub, sci_mask, sci_rms, x, y, stars.meta["fwhm"])
    ok = _clean(np.asarray(sci_mask, bool), x, y, int(np.ceil(_radius(stars.meta["fwhm"]))))
    ok &= f / fe > sc.star_snr_min
    ratio = f / np.asarray(stars["flux"])
    fwhm = float(stars.meta["fwhm"])
    sig_w = np.full(len(x), fwhm / 2.3548)
    xs, ys, _ = sep.winpos(np.ascontiguousarray(sci_sub, np.float32), x, y, sig_w)
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
    compact = ok & (np.abs(np.asarray(stars["fwhm"]) / stars.meta["fwhm"] - 1) < 0.3)
    out.meta["fwhm_sci"] = float(np.median(fw[compact if compact.sum() >= 3 else ok])) if ok.sum() else np.nan
    out.meta["ratio"] = float(np.median(ratio[ok])) if ok.sum() else np.nan
    return out


def subarea_labels(shape, x, y, radius: float) -> np.ndarray:
    """int32 image: ``k + 1`` within ``radius`` of position ``k`` (later ones win), else 0."""
    out = np.zeros(shape, np.int32)
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    ny, nx = shape
    for k, (xi, yi) in enumerate(zip(x, y)):
        cx, cy = int(round(xi)), int(round(yi))
        disk = (xx + cx - xi) ** 2 + (yy + cy - yi) ** 2 <= radius ** 2
        y0, x0 = cy - r, cx - r
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(cy + r + 1, ny), min(cx + r + 1, nx)
        if sy1 > sy0 and sx1 > sx0:
            view = out[sy0:sy1, sx0:sx1]
            view[disk[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]] = k + 1
    return out


def local_sky(data: np.ndarray, bad: np.ndarray, x, y, r_in: float, r_out: float) -> np.ndarray:
    """Median of unmasked pixels in the annulus ``r_in <= r < r_out`` around each position
    (0 where none): the residual sky pedestal under each sub-area."""
    r = int(np.ceil(r_out))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    ny, nx = data.shape
    out = np.zeros(len(x))
    for k, (xi, yi) in enumerate(zip(x, y)):
        cx, cy = int(round(xi)), int(round(yi))
        if not (r <= cx < nx - r and r <= cy < ny - r):
            continue
        rr = np.hypot(xx + cx - xi, yy + cy - yi)
        sl = (slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1))
        sel = (rr >= r_in) & (rr < r_out) & ~bad[sl]
        if sel.sum() > 10:
            out[k] = np.median(data[sl][sel])
    return out
