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

from ..detection.stamps import array_module, boxes, inside, mosaic, to_host


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


def pair_stars(stars: Table, sci_sub, sci_mask, sci_rms, cfg) -> Table:
    """Measure template ``stars`` on the aligned science image and flag the usable ones.

    Adds ``flux_sci``, ``flux_sci_err``, ``fwhm_sci``, ``ratio`` and boolean ``use``
    (clean and SNR-qualified in the science image, not prior-banned); ``meta['fwhm_sci']``
    and ``meta['ratio']`` (median flux ratio) are set. The images (NumPy or CuPy) are measured
    on a :func:`~ast3stream.detection.stamps.mosaic` of boxes around the stars.
    """
    sc = cfg.subtraction
    out = stars.copy()
    if len(stars) == 0:
        out.meta.update(fwhm_sci=np.nan, ratio=np.nan)
        for name in ("flux_sci", "flux_sci_err", "fwhm_sci", "ratio"):
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
    compact = ok & (np.abs(np.asarray(stars["fwhm"]) / stars.meta["fwhm"] - 1) < 0.3)
    out.meta["fwhm_sci"] = float(np.median(fw[compact if compact.sum() >= 3 else ok])) if ok.sum() else np.nan
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
