"""Alignment quality: offsets of stars matched between the aligned science and the template."""
from __future__ import annotations

import numpy as np
import sep
from scipy.spatial import cKDTree

from ..image import Frame
from ..sources.background import mesh_background


def bright_stars(data: np.ndarray, mask: np.ndarray, snr_min: float = 50.0, thresh: float = 5.0):
    """Windowed (``sep.winpos``) centroids of clean, high-SNR sources; returns ``(x, y, fwhm)``."""
    data = np.ascontiguousarray(data, np.float32)
    bmask = np.ascontiguousarray(mask != 0)
    bkg = mesh_background(data, bmask)
    sub = data - bkg.back()
    rms = bkg.globalrms
    objs = sep.extract(sub, thresh, err=rms, mask=bmask, minarea=5)
    keep = (objs["flag"] == 0) & (objs["flux"] / (rms * np.sqrt(objs["npix"])) > snr_min)
    objs = objs[keep]
    fwhm = 2.3548 * np.sqrt((objs["a"] ** 2 + objs["b"] ** 2) / 2)
    if len(objs) == 0:
        return np.array([]), np.array([]), np.array([])
    x, y, flag = sep.winpos(sub, objs["x"], objs["y"], np.maximum(fwhm / 2.3548, 0.5), mask=bmask)
    ok = flag == 0
    return x[ok], y[ok], fwhm[ok]


def measure_alignment(aligned: Frame, template: Frame, match_px: float = 2.0, snr_min: float = 50.0) -> dict:
    """Median and robust scatter of ``aligned - template`` offsets of matched stars [px].

    ``median_px`` is the length of the median offset vector, ``std_px`` the radial scatter
    ``sqrt(s_x^2 + s_y^2)`` with ``s = 1.4826 MAD`` per axis.
    """
    xa, ya, _ = bright_stars(aligned.data, aligned.mask, snr_min)
    xt, yt, _ = bright_stars(template.data, template.mask, snr_min)
    nan = dict(n_matched=0, dx_median=np.nan, dy_median=np.nan, dx_std=np.nan, dy_std=np.nan,
               median_px=np.nan, std_px=np.nan)
    if len(xa) == 0 or len(xt) == 0:
        return nan
    dist, idx = cKDTree(np.c_[xt, yt]).query(np.c_[xa, ya], distance_upper_bound=match_px)
    ok = np.isfinite(dist)
    if ok.sum() < 3:
        return nan | {"n_matched": int(ok.sum())}
    dx = xa[ok] - xt[idx[ok]]
    dy = ya[ok] - yt[idx[ok]]
    mdx, mdy = np.median(dx), np.median(dy)
    sdx = 1.4826 * np.median(np.abs(dx - mdx))
    sdy = 1.4826 * np.median(np.abs(dy - mdy))
    return dict(n_matched=int(ok.sum()), dx_median=float(mdx), dy_median=float(mdy),
                dx_std=float(sdx), dy_std=float(sdy), median_px=float(np.hypot(mdx, mdy)),
                std_px=float(np.hypot(sdx, sdy)))
