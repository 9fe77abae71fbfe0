"""Put a science frame on the template's pixel grid (Lanczos-3, flux conserving, masks too)."""
from __future__ import annotations

import weakref

import numpy as np

from scipy.interpolate import RegularGridInterpolator
from scipy.spatial import cKDTree

from ..image import Frame, MaskBits
from ..subtraction.backend import use_gpu
from ..subtraction.noise import resample_variance_factor
from ..templates.binning import bin_array, bin_header
from .lanczos import pixel_map, resample_cupy, resample_numba
from .measure import bright_stars

#: header keywords that describe the pixel grid and so come from the template
_WCS_PREFIXES = ("CTYPE", "CRPIX", "CRVAL", "CDELT", "CUNIT", "CD1_", "CD2_", "PC1_", "PC2_",
                 "PV1_", "PV2_", "A_", "B_", "AP_", "BP_", "LONPOLE", "LATPOLE", "RADESYS",
                 "EQUINOX", "WCSAXES", "NAXIS")


def _terms(u, v, degree: int) -> np.ndarray:
    return np.column_stack([u ** (n - k) * v ** k for n in range(degree + 1) for k in range(n + 1)])


_STARS: dict = {}


def frame_stars(frame: Frame, snr_min: float = 50.0):
    """``(x, y)`` of a frame's clean stars above ``snr_min``: from its ``SRC`` table (the sources
    stage's windowed centroids) when it has one, else :func:`~.measure.bright_stars`; cached while
    ``frame.data`` lives (a template serves many exposures)."""
    key = id(frame.data)
    if key not in _STARS:
        src = frame.sources
        if src is not None and {"x", "y", "flux", "fluxerr", "flag"} <= set(src.colnames):
            flux, err = np.asarray(src["flux"], float), np.asarray(src["fluxerr"], float)
            ok = (np.asarray(src["flag"]) == 0) & (flux > snr_min * np.where(err > 0, err, np.inf))
            _STARS[key] = (np.asarray(src["x"], float)[ok], np.asarray(src["y"], float)[ok])
        else:
            _STARS[key] = tuple(np.asarray(c) for c in bright_stars(frame.data, frame.mask, snr_min)[:2])
        weakref.finalize(frame.data, _STARS.pop, key, None)
    return _STARS[key]


def refine_map(science: Frame, template: Frame, xmap, ymap, step: int, degree: int, search_px: float,
               match_px: float, binning: int = 1):
    """Correct a WCS pixel map with the template's own stars as the astrometric reference.

    Bright stars of both frames (:func:`frame_stars`) are paired: the template stars
    are mapped into the science frame through ``(xmap, ymap)``, the mode of all pair offsets
    within ``search_px`` gives the bulk shift; pairs within ``2 match_px`` after it give an affine
    fit, and pairs within ``match_px`` of that the final fit of ``dx, dy`` (science px) as
    polynomials of ``degree`` in the template's normalised coordinates (pairs beyond 3.5 sigma
    clipped; the degree drops while there are fewer than 5 pairs per coefficient). Returns
    ``(xmap, ymap, info)``; ``info`` has ``n`` pairs, ``degree`` and the ``rms`` [px] of the fit
    (``n = 0`` and the map unchanged without 5 pairs). With ``binning`` n the map is on the
    n times finer grid of :func:`~.lanczos.pixel_map` and the template stars are put on it.
    """
    info = dict(n=0, degree=-1, rms=float("nan"))
    xs, ys = frame_stars(science)
    xt, yt = frame_stars(template)
    xt, yt = (xt + 0.5) * binning - 0.5, (yt + 0.5) * binning - 0.5
    if len(xs) < 5 or len(xt) < 5:
        return xmap, ymap, info
    gy, gx = np.arange(xmap.shape[0]) * step, np.arange(xmap.shape[1]) * step
    xm = RegularGridInterpolator((gy, gx), xmap, bounds_error=False, fill_value=None)(np.c_[yt, xt])
    ym = RegularGridInterpolator((gy, gx), ymap, bounds_error=False, fill_value=None)(np.c_[yt, xt])
    tree = cKDTree(np.c_[xs, ys])
    pairs = [(i, j) for i, near in enumerate(tree.query_ball_point(np.c_[xm, ym], search_px)) for j in near]
    if len(pairs) < 5:
        return xmap, ymap, info
    i, j = np.array(pairs).T
    dx, dy = xs[j] - xm[i], ys[j] - ym[i]
    nb = int(2 * search_px)
    hist, ex, ey = np.histogram2d(dx, dy, bins=nb, range=[[-search_px, search_px]] * 2)
    kx, ky = np.unravel_index(np.argmax(hist), hist.shape)
    sx, sy = (ex[kx] + ex[kx + 1]) / 2, (ey[ky] + ey[ky + 1]) / 2
    ny, nx = (s * binning for s in template.shape)
    u, v = 2 * xt / nx - 1, 2 * yt / ny - 1
    fx, fy = np.full(len(xt), sx), np.full(len(xt), sy)
    for deg, radius in ((min(degree, 1), 2 * match_px), (degree, match_px)):
        dist, idx = tree.query(np.c_[xm + fx, ym + fy], distance_upper_bound=radius)
        ok = np.isfinite(dist)
        if ok.sum() < 5:
            return xmap, ymap, info
        while deg > 0 and ok.sum() < 5 * (deg + 1) * (deg + 2) // 2:
            deg -= 1
        cx, cy, use, res = _fit_offsets(u[ok], v[ok], xs[idx[ok]] - xm[ok], ys[idx[ok]] - ym[ok], deg)
        A = _terms(u, v, deg)
        fx, fy = A @ cx, A @ cy
    gu, gv = np.meshgrid(2 * gx / nx - 1, 2 * gy / ny - 1)
    G = _terms(gu.ravel(), gv.ravel(), deg)
    info = dict(n=int(use.sum()), degree=deg, rms=float(np.sqrt(np.mean(res[use] ** 2))))
    return xmap + (G @ cx).reshape(xmap.shape), ymap + (G @ cy).reshape(ymap.shape), info


def _fit_offsets(u, v, rx, ry, degree: int, n_iter: int = 4):
    """Least-squares polynomials ``rx(u, v)``, ``ry(u, v)`` with pairs beyond 3.5 sigma clipped:
    ``(cx, cy, used, residual)``."""
    use = np.ones(len(u), bool)
    for _ in range(n_iter):
        A = _terms(u[use], v[use], degree)
        cx = np.linalg.lstsq(A, rx[use], rcond=None)[0]
        cy = np.linalg.lstsq(A, ry[use], rcond=None)[0]
        A = _terms(u, v, degree)
        res = np.hypot(rx - A @ cx, ry - A @ cy)
        sig = np.median(res[use]) / 1.1774  # per-axis sigma from the median of a Rayleigh distribution
        new = res < max(3.5 * sig, 0.05)
        if np.array_equal(new, use) or new.sum() < len(cx) + 3:
            break
        use = new
    return cx, cy, use, res


def align(science: Frame, template: Frame, cfg, gpu: bool | None = None, binning: int = 1) -> Frame:
    """Resample ``science`` onto ``template``'s grid; returns a Frame with the template's WCS.

    With ``binning`` n > 1 (the QIP lane: ``template`` is the n x n binned template, ``science``
    at full resolution) the science is resampled onto the n times finer grid of the template and
    then binned (:func:`~ast3stream.templates.bin_array`): resampling the well-sampled image and
    summing afterwards keeps the binned noise nearly uncorrelated and the PSF undistorted, where
    Lanczos resampling of an undersampled binned image would not.

    With ``cfg.subtraction.align_refine`` the WCS mapping is corrected by a polynomial fitted to
    the offsets of stars matched between the two frames (:func:`refine_map`) before resampling;
    the aligned header records ``ALNNSTAR``, ``ALNDEG`` and ``ALNRMS`` [px] of that fit.

    A science variance plane (``science.var``) is resampled with the same weights (it then
    describes the raw pixels, which aperture sums see); ``RSVAR`` is the mean ``sum w^2`` of
    the weights (the per-pixel variance of resampled noise over the raw one; 1 when binned),
    ``RSFRACX``/``RSFRACY`` the median fractional offsets (:mod:`ast3stream.subtraction.noise`).

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
    n = int(binning)
    shape = (template.shape[0] * n, template.shape[1] * n)
    xmap, ymap = pixel_map(template.wcs, science.wcs, shape, sc.align_grid_step, n)
    info = None
    if sc.align_refine:
        xmap, ymap, info = refine_map(science, template, xmap, ymap, sc.align_grid_step, sc.align_refine_degree,
                                      sc.align_search_px, sc.align_match_px, n)
    args = (data, mask, xmap, ymap, sc.align_grid_step, shape, sc.lanczos_a, sc.align_mask_weight)
    gpu = use_gpu(sc.backend) if gpu is None else gpu
    resample = resample_cupy if gpu else resample_numba
    out, out_mask = resample(*args)
    var = None
    if science.var is not None:
        v = np.where(np.isfinite(science.var), science.var, 0).astype(np.float32)
        var, _ = resample(v, mask, *args[2:])
    if n > 1:
        out, out_mask = bin_array(out, n), bin_array(out_mask, n, np.bitwise_or)
        var = bin_array(var, n) if var is not None else None
    if gpu:
        out, out_mask = out.get(), out_mask.get()
        var = var.get() if var is not None else None
    if var is not None:
        out_mask = out_mask | ((var <= 0) * np.uint16(MaskBits.BAD)).astype(np.uint16)
        var = np.where(var > 0, var, np.inf).astype(np.float32)
    header = bin_header(science.header, n) if n > 1 else science.header.copy()
    for key in list(header):
        if key.startswith(_WCS_PREFIXES):
            del header[key]
    for card in template.header.cards:
        if card.keyword.startswith(_WCS_PREFIXES):
            header[card.keyword] = (card.value, card.comment)
    rsvar, fx, fy = resample_variance_factor(xmap, ymap, sc.lanczos_a) if n == 1 else (1.0, 0.0, 0.0)
    header["RSVAR"] = (round(rsvar, 5), "mean sum of squared resampling weights")
    header["RSFRACX"] = (round(fx, 4), "median fractional x offset of the resampling")
    header["RSFRACY"] = (round(fy, 4), "median fractional y offset of the resampling")
    if info is not None:
        header["ALNNSTAR"] = (info["n"], "stars in the alignment refinement fit")
        header["ALNDEG"] = (info["degree"], "polynomial degree of the alignment refinement")
        if np.isfinite(info["rms"]):
            header["ALNRMS"] = (round(info["rms"], 4), "[px] rms of the alignment refinement fit")
    return Frame(data=out, mask=out_mask, header=header, primary=science.primary.copy(), var=var)
