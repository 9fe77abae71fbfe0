"""Noise model from the data: variance planes, effective gain, aperture-noise prediction and check.

* :func:`to_variance` turns a variance, inverse-variance or error plane into a variance map
  (infinite where the plane says "no data"); a *weight* plane is a relative inverse variance
  (SExtractor's ``MAP_WEIGHT``, SWarp's weights, HST drizzle's exposure-time ``WHT``):
  :func:`weight_variance` scales its ``1 / weight`` to the image's measured sky variance.
* :func:`effective_gain` gives the factor turning signal into Poisson variance
  (``var = signal / gain``) in the image's own units (counts, electrons, counts/s,
  surface brightness): none to add when a variance plane grows with the signal (it holds the
  sources' noise; its slope gives the gain); else the header's gain; else the sky
  pedestal (or the header's sky level for a sky-subtracted image) over its variance
  (Poisson sky: ``gain = sky / rms^2``; read noise neglected,
  so the gain is underestimated and the source noise overestimated, never the reverse);
  else none (a sky-subtracted image without a gain: the source term is left out, said so).
* Resampling, co-adding and the SFFT kernel correlate noise: a Lanczos-resampled pixel has
  variance ``sum w^2 R`` of the raw variance ``R`` (``RSVAR``, :func:`resample_variance_factor`),
  while an aperture sum keeps ``R`` per pixel. :func:`noise_acf` measures an image's noise
  autocorrelation on its sky pixels (after alignment, so it holds whatever resampling the
  image went through, ours or earlier), and :func:`correlated_factors` turns it and the
  kernel into the per-pixel variance of the convolved image and the ratio of an aperture
  sum's variance to the sum of its per-pixel variances; :func:`random_apertures` compares the scatter of random-aperture sums of a difference,
  away from sources and masks, with that prediction (the empirical/predicted ratio), and
  :func:`pooled_noise_ratio` pools the apertures of several differences of a small field.
"""
from __future__ import annotations

import numpy as np

ABSOLUTE_KINDS = ("variance", "invvar", "error")   #: planes in the image's units squared, or their roots/inverses
VAR_KINDS = ABSOLUTE_KINDS + ("weight",)           #: ... and the relative weight (:func:`weight_variance`)


def to_variance(plane: np.ndarray, kind: str) -> np.ndarray:
    """float32 variance from a ``kind`` plane (:data:`ABSOLUTE_KINDS`); inf where it has no data
    (non-finite, or a zero/negative inverse variance)."""
    p = np.asarray(plane, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "variance":
            v = p
        elif kind == "invvar":
            v = 1.0 / p
        elif kind == "error":
            v = p * p
        else:
            raise ValueError(f"variance kind {kind!r} is not one of {ABSOLUTE_KINDS} (a weight: weight_variance)")
    return np.where(np.isfinite(v) & (v > 0), v, np.inf).astype(np.float32)


def weight_variance(weight: np.ndarray, data: np.ndarray, bad: np.ndarray, box: int = 64) -> tuple[np.ndarray, float]:
    """``(variance, scale)`` of a relative weight plane: ``scale / weight``, with ``scale`` the
    median over good pixels of ``rms^2 weight``, ``rms`` the sky rms map of ``data`` (sep's mesh
    background, ``box`` px, sources clipped), so the variance is the measured sky variance where
    the weight is typical and follows the weight elsewhere (SExtractor's ``MAP_WEIGHT`` rescaling)."""
    from .background import background

    var = to_variance(weight, "invvar")
    good = ~np.asarray(bad, bool) & np.isfinite(var)
    if not good.any():
        raise ValueError("weight plane: no pixel with a positive weight")
    rms = background(np.where(good, data, 0).astype(np.float32), ~good, box)[1]
    scale = float(np.median((rms[good].astype(np.float64) ** 2) / var[good]))
    return var * np.float32(scale), scale


def effective_gain(back, rms, sub=None, var=None, bad=None, header_gain: float | None = None,
                   header_sky: float | None = None, rsvar: float = 1.0):
    """``(gain, method)``: signal / Poisson variance in the image's units (module docstring).

    ``back`` and ``rms`` are the sky background and rms maps, ``sub`` the sky-subtracted image,
    ``var`` a variance plane when there is one (then ``gain = inf`` means the plane already holds
    the sources' noise or none is to be added); ``header_sky`` the sky level a sky-subtracted
    image's header records (e.g. DECam's ``AVSKY``), used when the pixels have no pedestal;
    ``rsvar`` the resampling's variance factor (``RSVAR``: the raw sky variance is ``rms^2 / rsvar``)."""
    hg = float(header_gain) if header_gain is not None and np.isfinite(header_gain) and header_gain > 0 else None
    if hg is not None and var is None:
        return hg, "header"
    ok = np.ones(np.shape(back), bool) if bad is None else ~np.asarray(bad, bool)
    r = float(np.median(rms[ok])) / np.sqrt(rsvar)
    if var is not None:
        ok &= np.isfinite(var)
        r = float(np.sqrt(np.median(var[ok])))
    sky = float(np.median(back[ok]))
    g_sky = sky / r ** 2 if r > 0 and sky > 5 * r else None
    how = "sky pedestal / sky variance"
    if g_sky is None and header_sky is not None and r > 0 and header_sky > 5 * r:
        g_sky, how = header_sky / r ** 2, "header sky level / sky variance"
    if var is not None and sub is not None:
        bright = ok & (sub > 10 * r)
        if bright.sum() >= 20:   # does the plane grow with the signal (as 1 / gain)?
            slope = float(np.polyfit(sub[bright], var[bright], 1)[0])
            ref = hg or g_sky
            if slope > 0 and (ref is None or slope > 0.5 / ref):
                return np.inf, f"variance plane includes source noise (gain {1 / slope:.3g})"
    if hg is not None:
        return hg, "header"
    if g_sky is not None:
        return g_sky, how
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


def noise_acf(sub, rms, bad, r: int = 4, side: int = 1024) -> np.ndarray:
    """Normalised ``(2r+1)^2`` autocorrelation (``[dy, dx]``, 1 at the centre) of a sky-subtracted
    image's noise (NumPy or CuPy), from its central ``side x side`` pixels with sources (beyond
    3 rms, grown 2 px) and bad pixels left out: what resampling, co-adding or alignment did to
    it; the floor at the largest lags is removed. A delta when too few sky pixels remain."""
    from scipy.ndimage import binary_dilation

    from ..detection.stamps import to_host

    ny, nx = sub.shape
    y0, x0 = max(0, (ny - side) // 2), max(0, (nx - side) // 2)
    sl = np.s_[y0:y0 + side, x0:x0 + side]
    z = to_host(sub[sl]).astype(np.float64) / np.maximum(to_host(rms[sl]), 1e-30)
    m = ~to_host(bad[sl]) & np.isfinite(z)
    m &= ~binary_dilation(np.abs(np.where(m, z, 0)) > 3, iterations=2)
    z = np.where(m, z, 0)
    delta = np.zeros((2 * r + 1, 2 * r + 1))
    delta[r, r] = 1.0
    if m.sum() < 1000:
        return delta
    shape = [n + r for n in z.shape]
    fz, fm = np.fft.rfft2(z, shape), np.fft.rfft2(m.astype(float), shape)
    acf_z = np.fft.irfft2(fz * np.conj(fz), shape)
    acf_m = np.fft.irfft2(fm * np.conj(fm), shape)
    idx = np.r_[-r:r + 1]
    acf = acf_z[np.ix_(idx, idx)] / np.maximum(acf_m[np.ix_(idx, idx)], 1)
    if not np.isfinite(acf).all() or acf[r, r] <= 0:
        return delta
    acf = acf / acf[r, r]
    # faint static structure and sky residuals add a small positive floor at every lag, which
    # summed over an aperture would dominate: remove the outer ring's median, zero lags within
    # 3 sigma of 0 (the estimate's error is ~1 / sqrt(pixels))
    ring = np.hypot(*np.meshgrid(idx, idx)) >= r
    acf = acf - np.median(acf[ring])
    acf[np.abs(acf) < 3 / np.sqrt(m.sum())] = 0
    acf[r, r] = 1.0
    return acf


def _lag_weighted(a: np.ndarray, acf: np.ndarray) -> float:
    """``sum_tau (a corr a)(tau) acf(tau)``: the variance of ``sum(a * n)`` for unit-variance noise
    ``n`` of normalised autocorrelation ``acf``."""
    from scipy.signal import correlate

    r = acf.shape[0] // 2
    c = correlate(a, a, mode="full", method="fft")
    cy, cx = (np.array(c.shape) - 1) // 2
    h = min(r, cy, cx)
    win = np.zeros_like(acf)
    win[r - h:r + h + 1, r - h:r + h + 1] = c[cy - h:cy + h + 1, cx - h:cx + h + 1]
    return float(np.sum(win * acf))


def correlated_factors(acf: np.ndarray, kernel: np.ndarray, radius: float) -> tuple[float, float]:
    """For noise of normalised autocorrelation ``acf`` convolved with ``kernel``: ``(q, f)``, the
    per-pixel variance over the white-noise value ``var * sum(K^2)``, and an aperture sum's
    (``radius``) variance over the sum of its per-pixel variances (:func:`weighted_sum_factor`
    with the aperture's top-hat weights)."""
    per_pixel = _lag_weighted(kernel, acf)
    return per_pixel / float(np.sum(kernel ** 2)), weighted_sum_factor(acf, kernel, _disk(radius))


def weighted_sum_factor(acf: np.ndarray, kernel: np.ndarray, weights: np.ndarray) -> float:
    """Variance of ``sum(w * (K * n))`` (``n`` noise of autocorrelation ``acf``) over the value
    ``sum(w^2) var(K * n)`` that independent pixels would give: the factor by which the noise
    correlation raises an aperture sum's (top-hat ``w``) or a PSF fit's (``w`` the PSF) variance
    over the prediction from the per-pixel noise map. ``kernel`` ``[[1]]`` for unconvolved noise."""
    from scipy.signal import fftconvolve

    return _lag_weighted(fftconvolve(weights, kernel), acf) / (float(np.sum(weights ** 2)) * _lag_weighted(kernel, acf))


def _disk(r: float) -> np.ndarray:
    n = int(np.ceil(r))
    o = np.arange(-n, n + 1)
    return (np.hypot(o[:, None], o[None, :]) <= r).astype(float)


#: independent apertures the noise check needs (its ratio's standard error is then <= 0.1)
MIN_INDEPENDENT = 100
#: relative standard error of a 1.4826 MAD scale estimate from ``n`` independent normal values, times sqrt(n)
#: (its asymptotic efficiency is 36.7 % of the standard deviation's: ``1 / sqrt(2 x 0.367)``)
MAD_SE = 1.167


def aperture_z(diff, var, mask, radius: float, factor=1.0, images=(), n: int = 2000, seed: int = 0):
    """Random-aperture sums of ``diff`` (NumPy or CuPy arrays) over their predicted noise.

    Apertures of ``radius`` around ``n`` random pixels, with no masked pixel; those on a source
    of any of ``images`` (``(sub, var)`` pairs: aperture sum beyond 5 sigma) are dropped. The
    prediction is ``sqrt(factor * sum(var))``, ``factor`` a scalar or a function of the
    centres ``(x, y)`` (see :func:`correlated_factors`). Returns ``(z, n_indep)``: sum / prediction
    of the apertures kept, and the number of independent apertures they amount to (the area
    they cover over one aperture's)."""
    from ..detection.stamps import boxes, to_host

    ny, nx = diff.shape
    m = int(np.ceil(radius))
    if ny <= 2 * m + 2 or nx <= 2 * m + 2:
        return np.zeros(0), 0
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
    n_indep = _independent(diff.shape, cx[keep], cy[keep], m, disk)
    z = s[keep] / np.sqrt((f * v)[keep] if np.ndim(f) else f * v[keep])
    return z, n_indep


def scatter_ratio(z, n_indep: float, min_independent: int = MIN_INDEPENDENT) -> tuple[float, float]:
    """``(ratio, error)``: the robust std (1.4826 MAD) of ``z`` and its standard error
    ``MAD_SE ratio / sqrt(n_indep)``; NaN for both below ``min_independent`` independent
    apertures, where that error passes 0.1 (a 41 x 51 px cutout holds 13-29)."""
    z = np.asarray(z, float)
    if n_indep < min_independent or z.size == 0:
        return float("nan"), float("nan")
    ratio = float(1.4826 * np.median(np.abs(z - np.median(z))))
    return ratio, MAD_SE * ratio / float(np.sqrt(n_indep))


def random_apertures(diff, var, mask, radius: float, factor=1.0, images=(), n: int = 2000, seed: int = 0):
    """Empirical / predicted noise of random-aperture sums of ``diff`` (:func:`aperture_z`).
    Returns ``(ratio, error, n_indep, z)``, ``ratio`` and ``error`` from :func:`scatter_ratio`
    (NaN below 100 independent apertures)."""
    z, n_indep = aperture_z(diff, var, mask, radius, factor, images, n, seed)
    return (*scatter_ratio(z, n_indep), n_indep, z)


def pooled_noise_ratio(samples, min_independent: int = MIN_INDEPENDENT) -> dict:
    """The aperture-noise ratio of several differences of one field pooled: each pair's ratio has
    the same expectation (1 when the noise model is right), so their ``z`` (:func:`aperture_z`)
    are put together when no single pair holds ``min_independent`` independent apertures.

    ``samples``: ``(z, n_indep, epoch_a, epoch_b)`` per difference. Differences sharing an epoch
    share its noise at a given place, so the pairs of ``E`` epochs (in ``C`` groups with no
    epoch in common) hold only ``E - C`` independent differences there: the pooled count of
    independent apertures is, per group, its pairs' mean ``n_indep`` times its epochs less one,
    never their sum when pairs overlap. Returns ``ratio``, ``error`` (:func:`scatter_ratio`), ``n_independent``,
    ``n_apertures`` (the ``z`` values used) and ``n_pairs``."""
    samples = list(samples)
    parent: dict = {}

    def root(e):
        while parent.setdefault(e, e) != e:
            e = parent[e]
        return e

    for _, _, a, b in samples:
        parent[root(a)] = root(b)
    groups: dict = {}
    for _, n, a, _ in samples:
        groups.setdefault(root(a), []).append(n)
    epochs = {r: sum(root(e) == r for e in list(parent)) for r in groups}
    n_indep = sum(float(np.mean(ns)) * (epochs[r] - 1) for r, ns in groups.items())
    z = np.concatenate([np.asarray(s[0], float) for s in samples]) if samples else np.zeros(0)
    ratio, error = scatter_ratio(z, n_indep, min_independent)
    return dict(ratio=ratio, error=error, n_independent=int(n_indep), n_apertures=int(z.size), n_pairs=len(samples))


def _independent(shape, cx, cy, m: int, disk) -> int:
    """Area covered by the apertures (``disk``, half-size ``m``) at ``cx, cy``, in apertures."""
    cover = np.zeros(shape, bool)
    for x0, y0 in zip(cx, cy):
        cover[y0 - m:y0 + m + 1, x0 - m:x0 + m + 1] |= disk
    return int(cover.sum() // disk.sum())
