"""Noise model from the data: variance planes, effective gain, aperture-noise prediction and check.

* :func:`to_variance` turns a variance, inverse-variance (weight) or error plane into a
  variance map (infinite where the plane says "no data").
* :func:`effective_gain` gives the factor turning signal into Poisson variance
  (``var = signal / gain``) in the image's own units (counts, electrons, counts/s,
  surface brightness): the header's gain when there is one; else the slope of a variance
  plane against the signal when the plane includes the sources' noise; else the sky
  pedestal over its variance (Poisson sky: ``gain = sky / rms^2``; read noise neglected,
  so the gain is underestimated and the source noise overestimated, never the reverse);
  else none (a sky-subtracted image without a gain: the source term is left out, said so).
* Resampling correlates noise: a Lanczos-resampled pixel has variance ``sum w^2 R`` of the
  raw variance ``R``, while an aperture sum keeps ``R`` per pixel; the SFFT kernel ``K`` does
  the same to the convolved image. :func:`aperture_factor` is the ratio of an aperture
  sum's variance to the sum of its per-pixel variances for a noise kernel ``g``;
  :func:`random_apertures` compares the scatter of random-aperture sums of a difference,
  away from sources and masks, with that prediction (the empirical/predicted ratio).
"""
from __future__ import annotations

import numpy as np

VAR_KINDS = ("variance", "invvar", "weight", "error")


def to_variance(plane: np.ndarray, kind: str) -> np.ndarray:
    """float32 variance from a ``kind`` plane (:data:`VAR_KINDS`); inf where it has no data
    (non-finite, or a zero/negative inverse variance)."""
    p = np.asarray(plane, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "variance":
            v = p
        elif kind in ("invvar", "weight"):
            v = 1.0 / p
        elif kind == "error":
            v = p * p
        else:
            raise ValueError(f"variance kind {kind!r} is not one of {VAR_KINDS}")
    return np.where(np.isfinite(v) & (v > 0), v, np.inf).astype(np.float32)


def effective_gain(back, rms, sub=None, var=None, bad=None, header_gain: float | None = None):
    """``(gain, method)``: signal / Poisson variance in the image's units (module docstring).

    ``back`` and ``rms`` are the sky background and rms maps, ``sub`` the sky-subtracted image,
    ``var`` a variance plane when there is one (then ``gain = inf`` means the plane already holds
    the sources' noise or none is to be added)."""
    if header_gain is not None and np.isfinite(header_gain) and header_gain > 0:
        return float(header_gain), "header"
    ok = np.ones(np.shape(back), bool) if bad is None else ~np.asarray(bad, bool)
    if var is not None and sub is not None:
        ok &= np.isfinite(var)
        sky_var = float(np.median(var[ok]))
        bright = ok & (sub > 30 * np.sqrt(sky_var))
        if bright.sum() >= 50:   # does the plane grow with the signal?
            slope = np.polyfit(sub[bright], var[bright] - sky_var, 1)[0]
            if slope > 0 and np.median(var[bright]) > 2 * sky_var:
                return np.inf, "variance plane includes source noise"
    sky, r = float(np.median(back[ok])), float(np.median(rms[ok]))
    if var is not None:
        r = float(np.sqrt(np.median(var[ok & np.isfinite(var)])))
    if r > 0 and sky > 5 * r:
        return sky / r ** 2, "sky pedestal / sky variance"
    return np.inf, "none: sky-subtracted image without a gain, source noise omitted"


def lanczos_weights(frac: float, a: int = 3) -> np.ndarray:
    """Normalised 1-D Lanczos-``a`` weights of the ``2a`` input pixels for a fractional offset."""
    t = frac - np.arange(-a + 1, a + 1)
    w = np.sinc(t) * np.sinc(t / a)
    return w / w.sum()


def resample_variance_factor(xmap, ymap, a: int = 3) -> tuple[float, float, float]:
    """``(mean sum w^2, median frac x, median frac y)`` of Lanczos resampling over the map nodes."""
    fx, fy = (np.asarray(m, float).ravel() % 1.0 for m in (xmap, ymap))
    sel = slice(None, None, max(1, fx.size // 4000))
    s2 = [np.sum(lanczos_weights(u, a) ** 2) * np.sum(lanczos_weights(v, a) ** 2) for u, v in zip(fx[sel], fy[sel])]
    return float(np.mean(s2)), float(np.median(fx)), float(np.median(fy))


def resample_kernel(fx: float, fy: float, a: int = 3) -> np.ndarray:
    """2-D ``[dy, dx]`` Lanczos kernel of one fractional offset (a delta for ``0, 0``)."""
    return np.outer(lanczos_weights(fy, a), lanczos_weights(fx, a))


def _disk(r: float) -> np.ndarray:
    n = int(np.ceil(r))
    o = np.arange(-n, n + 1)
    return (np.hypot(o[:, None], o[None, :]) <= r).astype(float)


def aperture_factor(g: np.ndarray, r: float) -> float:
    """Variance of an aperture sum of radius ``r`` over the sum of its pixels' variances, for
    white noise convolved with ``g``: ``||chi_A * g||^2 / (N_A ||g||^2)``."""
    from scipy.signal import fftconvolve

    chi = _disk(r)
    return float(np.sum(fftconvolve(chi, g) ** 2) / (chi.sum() * np.sum(g ** 2)))


def random_apertures(diff, var, mask, radius: float, factor=1.0, images=(), n: int = 2000, seed: int = 0):
    """Empirical / predicted noise of random-aperture sums of ``diff`` (NumPy or CuPy arrays).

    Apertures of ``radius`` around ``n`` random pixels, with no masked pixel; those on a source
    of any of ``images`` (``(sub, var)`` pairs: aperture sum beyond 5 sigma) are dropped. The
    prediction is ``sqrt(factor * sum(var))``, ``factor`` a scalar or a function of the
    centres ``(x, y)`` (see :func:`aperture_factor`). Returns ``(ratio, n_used)``: the robust std
    (1.4826 MAD) of sum / prediction, NaN with fewer than 100 apertures."""
    from ..detection.stamps import boxes, to_host

    ny, nx = diff.shape
    m = int(np.ceil(radius))
    if ny <= 2 * m + 2 or nx <= 2 * m + 2:
        return float("nan"), 0
    rng = np.random.default_rng(seed)
    cx, cy = rng.integers(m, nx - m, n), rng.integers(m, ny - m, n)
    disk = _disk(radius).astype(bool)

    def sums(a):
        return to_host(boxes(a, cx, cy, m))[:, disk].astype(np.float64).sum(axis=1)

    bad = sums(mask != 0) > 0
    s, v = sums(diff), sums(var)
    f = factor(cx, cy) if callable(factor) else factor
    keep = ~bad & np.isfinite(v) & (v > 0) & np.isfinite(s)
    for sub, var_i in images:
        vi = sums(var_i)
        keep &= np.abs(sums(sub)) < 5 * np.sqrt(np.where(vi > 0, vi, np.inf))
    if keep.sum() < 100:
        return float("nan"), int(keep.sum())
    z = s[keep] / np.sqrt((f * v)[keep] if np.ndim(f) else f * v[keep])
    return float(1.4826 * np.median(np.abs(z - np.median(z)))), int(keep.sum())
