"""PSF FWHM of a real image from fitted profiles of isolated, unsaturated, unblended stars.

1. sources: ``sep.extract`` (5 sigma, deblended) on the background-subtracted image;
2. candidates: unflagged by sep (not merged, not truncated), ``SNR >= snr_min``, no single
   pixel holding 65 % of the flux (cosmic rays, hot pixels; a star of FWHM 1 px has 58 %), peak below
   ``saturation_frac`` of the saturation level (given, or found as the plateau several bright
   sources share), no masked pixel in their fitting box, and no other detection within
   ``isolation`` times the first-guess FWHM (so also no faint neighbour in the wings);
3. each candidate (the ``max_fit`` brightest) is fitted with a circular Moffat (or Gaussian)
   profile plus a constant, integrated over pixels (the model is evaluated on a sub-pixel
   grid and summed, so an undersampled PSF of FWHM < 2 px is fitted without bias);
4. star/galaxy separation on the fitted FWHMs alone: the stellar locus is the densest
   cluster of ``log FWHM`` (galaxies are broader, cosmic rays and hot pixels narrower), the
   stars are the sources within ``locus_width`` of it; the FWHM is their median. Fits
   narrower than 0.6 px (unresolved spikes: cosmic rays, hot pixels) are no candidates.

Failures raise :class:`PSFError` with the reason (too few sources, no locus) instead of
returning a wrong number. :func:`psfex_fwhm` reads the FWHM of a PSFEx model file
(the legacypipe cutouts carry them) to check the measurement.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sep
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

_FW = 2.0 * np.sqrt(2.0 * np.log(2.0))


class PSFError(RuntimeError):
    """The image's PSF could not be measured; the message says why."""


@dataclass
class PSF:
    fwhm: float                 #: median fitted FWHM of the stars [px]
    scatter: float              #: robust relative scatter of the stars' FWHMs
    beta: float                 #: median Moffat beta (inf for a Gaussian profile)
    n_stars: int
    ellipticity: float          #: median 1 - b/a of the stars (sep moments)
    stars: dict = field(default_factory=dict)   #: x, y, flux, fwhm, peak of the stars
    n_candidates: int = 0
    saturation: float = np.inf  #: level used to reject saturated stars (image units)


def moffat_fwhm(alpha, beta):
    return 2.0 * alpha * np.sqrt(2.0 ** (1.0 / beta) - 1.0)


def _profile(r2, fwhm, beta):
    """Unit-flux circular profile at squared radius ``r2``: Moffat, Gaussian for ``beta`` None."""
    if beta is None:
        s2 = (fwhm / _FW) ** 2
        return np.exp(-0.5 * r2 / s2) / (2 * np.pi * s2)
    alpha2 = (fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))) ** 2
    return (beta - 1.0) / (np.pi * alpha2) * (1.0 + r2 / alpha2) ** (-beta)


def _fit_one(stamp, err, fwhm0, oversample, moffat):
    """Least-squares fit of one stamp: ``(flux, x, y, fwhm, beta, ok)`` (x, y stamp pixels)."""
    n = stamp.shape[0]
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    g = (np.arange(n)[:, None] + sub[None, :]).ravel()   # sub-pixel centres along one axis
    c = (n - 1) / 2
    flux0 = max(float(stamp.sum()), float(stamp.max()) * fwhm0 ** 2)

    def model(p):
        f, x0, y0, fw, b = p[:5]
        beta = p[5] if moffat else None
        r2 = (g[None, :] - x0) ** 2 + (g[:, None] - y0) ** 2
        m = _profile(r2, fw, beta).reshape(n, oversample, n, oversample).mean(axis=(1, 3))
        return f * m + b

    p0 = [flux0, c, c, fwhm0, 0.0] + ([3.0] if moffat else [])
    lo = [0.0, c - 2, c - 2, 0.3, -np.inf] + ([1.2] if moffat else [])
    hi = [np.inf, c + 2, c + 2, 3 * n, np.inf] + ([15.0] if moffat else [])
    p0 = np.clip(p0, np.array(lo) + 1e-6, np.array(hi) - 1e-6)
    try:
        res = least_squares(lambda p: ((model(p) - stamp) / err).ravel(), p0, bounds=(lo, hi),
                            x_scale="jac", max_nfev=200)
    except (ValueError, np.linalg.LinAlgError):
        return None
    p = res.x
    return p[0], p[1], p[2], p[3], (p[5] if moffat else np.inf), bool(res.success)


def saturation_level(peaks: np.ndarray, saturate: float | None = None) -> float:
    """``saturate`` when given; else the plateau several bright sources share: the highest peak
    when at least 3 sources have a peak within 1 % of it, else infinity."""
    if saturate is not None and np.isfinite(saturate) and saturate > 0:
        return float(saturate)
    peaks = np.asarray(peaks, float)
    if peaks.size < 3:
        return np.inf
    top = np.max(peaks)
    return float(top) if np.sum(peaks >= 0.99 * top) >= 3 else np.inf


def fit_fwhm(data_sub, rms, x, y, fwhm0: float, *, bad=None, profile: str = "moffat"):
    """Fitted FWHM (and Moffat beta, flux) of the sources at ``x, y`` of a background-subtracted
    image; NaN where the box leaves the image, holds a masked pixel or the fit fails."""
    data = np.asarray(data_sub, np.float64)
    rms = np.broadcast_to(np.asarray(rms, np.float64), data.shape)
    h = int(np.clip(np.ceil(2.0 * fwhm0) + 2, 4, 30))
    oversample = 5 if fwhm0 < 2.5 else 3 if fwhm0 < 5 else 1
    ny, nx = data.shape
    out = np.full((len(x), 4), np.nan)
    jobs, rows = [], []
    for k, (xi, yi) in enumerate(zip(np.asarray(x, float), np.asarray(y, float))):
        cx, cy = int(round(xi)), int(round(yi))
        if not (h <= cx < nx - h and h <= cy < ny - h):
            continue
        sl = np.s_[cy - h:cy + h + 1, cx - h:cx + h + 1]
        if bad is not None and bad[sl].any():
            continue
        jobs.append((data[sl], np.maximum(rms[sl], 1e-12), fwhm0, oversample, profile == "moffat"))
        rows.append(k)
    for k, r in zip(rows, _fit_all(jobs)):
        if r is None or not r[5] or not (0.3 < r[3] < 3 * (2 * h + 1) - 1e-3):
            continue
        out[k] = r[3], r[4], r[0], 0
    return out[:, 0], out[:, 1], out[:, 2]


def _fit_all(jobs: list) -> list:
    """:func:`_fit_one` of every job, in the worker's process pool when it has one
    (:func:`ast3stream.sources.strips.current`; each fit is ~10 ms of Python holding the GIL) and
    there are enough, else here: the same results either way."""
    from ..sources.strips import current

    workers = current()
    if workers is None or len(jobs) < 8:
        return [_fit_one(*job) for job in jobs]
    return list(workers.map(_fit_job, jobs, chunksize=2))


def _fit_job(job):
    return _fit_one(*job)


def _locus(logf: np.ndarray, width: float) -> float:
    """Centre of the densest cluster of ``logf`` (counts within +-width); among clusters at least
    half as dense, the narrowest (stars are the most compact well-populated class)."""
    counts = np.array([np.sum(np.abs(logf - v) <= width) for v in logf])
    dense = counts >= max(0.5 * counts.max(), min(3, counts.max()))
    v = np.min(logf[dense])
    for _ in range(3):   # re-centre on the members
        v = float(np.median(logf[np.abs(logf - v) <= width]))
    return v


def detect(data: np.ndarray, rms: np.ndarray, bad: np.ndarray, thresh: float = 5.0) -> np.ndarray:
    """``sep.extract`` at ``thresh`` sigma (deblended) of a background-subtracted float32 image with
    its per-pixel ``rms``; in the worker pool on a large frame (:func:`~ast3stream.sources.strips.offload`)."""
    from ..sources.strips import offload

    return offload(_extract, data, rms, bad, thresh=thresh)


def _extract(data, rms, bad, *, thresh: float) -> np.ndarray:
    return sep.extract(data, thresh, err=rms, mask=bad, minarea=3, deblend_cont=0.005)


def measure_psf(data_sub, bad, rms, *, saturation: float | None = None, snr_min: float = 20.0,
                isolation: float = 3.0, max_fit: int = 120, min_stars: int = 5,
                profile: str = "moffat", locus_width: float = 0.1, saturation_frac: float = 0.7,
                thresh: float = 5.0, objects: np.ndarray | None = None) -> PSF:
    """The PSF of a background-subtracted image (module docstring). ``bad`` is the boolean map
    of unusable pixels, ``rms`` the per-pixel sky rms; ``saturation`` in image units (None:
    found from the pixels); ``objects``: the image's :func:`detect` at ``thresh``, when the
    caller has it. Raises :class:`PSFError` with the reason when it cannot."""
    data = np.ascontiguousarray(data_sub, np.float32)
    bad = np.ascontiguousarray(bad, bool)
    rms = np.array(np.broadcast_to(rms, data.shape), np.float32)
    objs = detect(data, rms, bad, thresh) if objects is None else objects
    if len(objs) < min_stars:
        raise PSFError(f"only {len(objs)} sources above {thresh} sigma")
    sat = saturation_level(objs["peak"], saturation)
    a = np.sqrt(np.maximum(objs["a"] * objs["b"], 1e-6))
    flux, ferr, _ = sep.sum_circle(data, objs["x"], objs["y"], 3.0 * np.maximum(a, 1.0), err=rms, mask=bad)
    snr = np.where(ferr > 0, flux / np.where(ferr > 0, ferr, 1), 0)
    cand = (objs["flag"] == 0) & (snr >= snr_min) & (objs["peak"] < saturation_frac * sat) & (objs["b"] > 0)
    cand &= objs["peak"] < 0.65 * np.maximum(flux, 1e-30)   # one pixel with most of the flux: a spike
    if cand.sum() < min_stars:
        raise PSFError(f"only {int(cand.sum())} unblended unsaturated sources with SNR >= {snr_min} "
                       f"(of {len(objs)} detected)")
    fwhm0 = float(_FW * np.median(a[cand]))      # first guess (moments; biased up by galaxies)
    fwhm0 = float(_FW * np.percentile(a[cand], 25)) if cand.sum() >= 8 else fwhm0
    # saturated stars are dropped, but their wings and neighbours count as neighbours
    xy = np.c_[objs["x"], objs["y"]]
    d, _ = cKDTree(xy).query(xy, k=2)
    reach = np.maximum(isolation * fwhm0, 3.0 * objs["a"])
    cand &= d[:, 1] > reach
    idx = np.flatnonzero(cand)
    idx = idx[np.argsort(-flux[idx])][:max_fit]
    if idx.size < min_stars:
        raise PSFError(f"only {idx.size} isolated candidates (no neighbour within {isolation} x {fwhm0:.2f} px)")
    fw, beta, fflux = fit_fwhm(data, rms, objs["x"][idx], objs["y"][idx], fwhm0, bad=bad, profile=profile)
    spikes = fw < 0.6   # unresolved: cosmic rays, hot pixels (a real PSF has FWHM > 0.6 px)
    ok = np.isfinite(fw) & ~spikes
    if ok.sum() < min_stars:
        raise PSFError(f"profile fits converged for {int(ok.sum())} of {idx.size} candidates "
                       f"({int(spikes.sum())} unresolved spikes)")
    logf = np.log10(fw[ok])
    v = _locus(logf, locus_width)
    star = np.abs(logf - v) <= locus_width
    if star.sum() < min_stars:
        raise PSFError(f"no stellar locus: {int(star.sum())} sources within {locus_width} dex of FWHM {10 ** v:.2f} px")
    sel = idx[ok][star]
    f_star = fw[ok][star]
    med = float(np.median(f_star))
    ell = 1.0 - objs["b"][sel] / objs["a"][sel]
    return PSF(fwhm=med, scatter=float(1.4826 * np.median(np.abs(f_star / med - 1))),
               beta=float(np.median(beta[ok][star])), n_stars=int(star.sum()),
               ellipticity=float(np.median(ell)), n_candidates=int(idx.size), saturation=sat,
               stars=dict(x=objs["x"][sel], y=objs["y"][sel], flux=fflux[ok][star], fwhm=f_star,
                          peak=objs["peak"][sel]))


def psfex_model(path, ccd: str | None = None) -> tuple[np.ndarray, float, float]:
    """``(image, samp, psfex_fwhm)`` of a PSFEx model file (the row ``ccd`` of a legacypipe merged
    file): the model's constant term normalised to unit sum, its sampling ``PSF_SAMP`` [image px
    per model px] and PSFEx's own ``PSF_FWHM`` (NaN when absent)."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        for hdu in hdul[1:]:
            if not isinstance(hdu, fits.BinTableHDU):
                continue
            names = {n.lower(): n for n in hdu.columns.names}
            if "psf_mask" not in names:
                continue
            t = hdu.data
            row = 0
            if ccd is not None and "ccdname" in names:
                rows = np.flatnonzero(np.char.strip(t[names["ccdname"]].astype(str)) == ccd)
                if rows.size == 0:
                    raise PSFError(f"{path}: no PSFEx model for CCD {ccd}")
                row = int(rows[0])
            comp = np.asarray(t[names["psf_mask"]][row], float)
            img = comp[0] if comp.ndim == 3 else comp
            samp = float(t[names["psf_samp"]][row]) if "psf_samp" in names else float(hdu.header.get("PSF_SAMP", 1.0))
            own = (float(t[names["psf_fwhm"]][row]) if "psf_fwhm" in names
                   else float(hdu.header.get("PSF_FWHM", np.nan)))
            return img / img.sum(), samp, own
    raise PSFError(f"{path}: no PSFEx model (psf_mask column) found")


def model_fwhm(img: np.ndarray, samp: float = 1.0) -> float:
    """This module's estimator (circular Moffat, :func:`fit_fwhm`) on a PSF model image [image px],
    comparable with :func:`measure_psf`."""
    c = (img.shape[0] - 1) / 2
    fw, _, _ = fit_fwhm(img / img.max() * 1e4, 1.0, [c], [c], 3.0, profile="moffat")
    return float(fw[0] * samp)


def psfex_fwhm(path, ccd: str | None = None) -> tuple[float, float]:
    """``(fwhm, psfex_fwhm)`` [image px] of a PSFEx model file (:func:`psfex_model`): ``fwhm`` is
    :func:`model_fwhm` of the model's constant term at its sampling; ``psfex_fwhm`` is PSFEx's own
    ``PSF_FWHM``, a different definition that reads ~25 % larger on the DECam models."""
    img, samp, own = psfex_model(path, ccd)
    return model_fwhm(img, samp), own
