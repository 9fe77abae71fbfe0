"""Put a science frame on the template's pixel grid (Lanczos-3, flux conserving, masks too)."""
from __future__ import annotations

import numpy as np

from scipy.interpolate import RegularGridInterpolator
from scipy.spatial import cKDTree

from ..image import Frame, MaskBits
from ..subtraction.backend import use_gpu
from .lanczos import pixel_map, resample_cupy, resample_numba
from .measure import bright_stars

#: header keywords that describe the pixel grid and so come from the template
_WCS_PREFIXES = ("CTYPE", "CRPIX", "CRVAL", "CDELT", "CUNIT", "CD1_", "CD2_", "PC1_", "PC2_",
                 "PV1_", "PV2_", "A_", "B_", "AP_", "BP_", "LONPOLE", "LATPOLE", "RADESYS",
                 "EQUINOX", "WCSAXES", "NAXIS")


def residual_shift(science: Frame, template: Frame, xmap, ymap, step: int) -> tuple[float, float]:
    """Median ``(dx, dy)`` [science px] between bright science stars and template stars mapped
    through the WCSs: what the two WCSs leave misaligned (0, 0 with fewer than 5 matches)."""
    xs, ys, _ = bright_stars(science.data, science.mask)
    xt, yt, _ = bright_stars(template.data, template.mask)
    if len(xs) < 5 or len(xt) < 5:
        return 0.0, 0.0
    gy, gx = np.arange(xmap.shape[0]) * step, np.arange(xmap.shape[1]) * step
    xm = RegularGridInterpolator((gy, gx), xmap, bounds_error=False, fill_value=None)(np.c_[yt, xt])
    ym = RegularGridInterpolator((gy, gx), ymap, bounds_error=False, fill_value=None)(np.c_[yt, xt])
    dist, idx = cKDTree(np.c_[xs, ys]).query(np.c_[xm, ym], distance_upper_bound=3.0)
    ok = np.isfinite(dist)
    if ok.sum() < 5:
        return 0.0, 0.0
    return float(np.median(xs[idx[ok]] - xm[ok])), float(np.median(ys[idx[ok]] - ym[ok]))


def align(science: Frame, template: Frame, cfg, gpu: bool | None = None) -> Frame:
    """Resample ``science`` onto ``template``'s grid; returns a Frame with the template's WCS.

    With ``cfg.subtraction.align_refine`` the WCS mapping is corrected by the median residual
    shift of matched bright stars (:func:`residual_shift`) before resampling.

    Non-WCS header cards (GAIN, exposure, zero point ...) come from the science frame.
    NaN input pixels are set to 0 and flagged ``BAD``. ``gpu=None`` follows
    ``cfg.subtraction.backend``; the result of the CuPy path is returned as NumPy arrays.
    """
    sc = cfg.subtraction
    data = np.asarray(science.data, np.float32)
    mask = np.asarray(science.mask, np.uint16)
    bad = ~np.isfinite(data)
    if bad.any():
        data = np.where(bad, np.float32(0), data)
        mask = mask | (bad * np.uint16(MaskBits.BAD)).astype(np.uint16)
    xmap, ymap = pixel_map(template.wcs, science.wcs, template.shape, sc.align_grid_step)
    if sc.align_refine:
        dx, dy = residual_shift(science, template, xmap, ymap, sc.align_grid_step)
        xmap, ymap = xmap + dx, ymap + dy
    args = (data, mask, xmap, ymap, sc.align_grid_step, template.shape, sc.lanczos_a, sc.align_mask_weight)
    if use_gpu(sc.backend) if gpu is None else gpu:
        out, out_mask = (a.get() for a in resample_cupy(*args))
    else:
        out, out_mask = resample_numba(*args)
    header = science.header.copy()
    for key in list(header):
        if key.startswith(_WCS_PREFIXES):
            del header[key]
    for card in template.header.cards:
        if card.keyword.startswith(_WCS_PREFIXES):
            header[card.keyword] = (card.value, card.comment)
    return Frame(data=out, mask=out_mask, header=header, primary=science.primary.copy())
