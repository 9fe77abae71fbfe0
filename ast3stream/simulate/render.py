"""Drawing sources into an image in electrons: PSF point sources on postage stamps (numba),
PSF-convolved Sersic galaxies, trailed movers, satellite trails and cosmic-ray tracks.

Every source's stamp is normalised so that exactly ``flux`` electrons are added (less only
where the stamp leaves the image), which keeps truth magnitudes and pixels consistent. PSF
stamps are integrated over pixels by 3 x 3 sub-sampling in the central 5 x 5 pixels.
"""
from __future__ import annotations

import numba
import numpy as np
from scipy.signal import fftconvolve
from scipy.special import gammaincinv

from .psf import PSFModel, moffat_alpha

OVERSAMPLE = 3   #: sub-pixel samples per axis in the PSF core
CORE = 2         #: half-size [px] of the oversampled core
FAINT_E = 0.05   #: stamps reach out to where the profile falls below this [e-/px]
BAND_ROWS = 256  #: point sources are drawn in parallel in row bands at least this tall


@numba.njit(cache=True, nogil=True)
def _moffat_one(img, k, x, y, flux, a, b, theta, beta, half):
    ny, nx = img.shape
    h = half[k]
    ix, iy = int(np.floor(x[k] + 0.5)), int(np.floor(y[k] + 0.5))
    c, s = np.cos(theta[k]), np.sin(theta[k])
    ia2, ib2 = 1.0 / a[k] ** 2, 1.0 / b[k] ** 2
    n = 2 * h + 1
    stamp = np.empty((n, n))
    total = 0.0
    for j in range(n):
        for i in range(n):
            os = OVERSAMPLE if abs(j - h) <= CORE and abs(i - h) <= CORE else 1
            v = 0.0
            for sj in range(os):
                dy = iy - h + j + (sj + 0.5) / os - 0.5 - y[k]
                for si in range(os):
                    dx = ix - h + i + (si + 0.5) / os - 0.5 - x[k]
                    u, w = c * dx + s * dy, -s * dx + c * dy
                    v += (1.0 + u * u * ia2 + w * w * ib2) ** (-beta)
            stamp[j, i] = v / (os * os)
            total += stamp[j, i]
    scale = flux[k] / total
    for j in range(n):
        yy = iy - h + j
        if yy < 0 or yy >= ny:
            continue
        for i in range(n):
            xx = ix - h + i
            if 0 <= xx < nx:
                img[yy, xx] += stamp[j, i] * scale


@numba.njit(cache=True, nogil=True)
def _add_moffat(img, x, y, flux, a, b, theta, beta, half):
    for k in range(x.size):
        _moffat_one(img, k, x, y, flux, a, b, theta, beta, half)


@numba.njit(cache=True, nogil=True, parallel=True)
def _add_moffat_bands(img, order, starts, x, y, flux, a, b, theta, beta, half):
    """Stars ``order[starts[i]:starts[i + 1]]`` lie in row band ``i``; bands are at least two
    stamps tall, so bands of one parity never touch the same pixels and run in parallel."""
    nb = starts.size - 1
    for parity in range(2):
        for q in numba.prange((nb - parity + 1) // 2):
            band = 2 * q + parity
            for m in range(starts[band], starts[band + 1]):
                _moffat_one(img, order[m], x, y, flux, a, b, theta, beta, half)


def stamp_half(flux, fwhm, beta, lo=3, hi=80):
    """Half-size reaching the radius where the Moffat surface brightness drops to ``FAINT_E``."""
    alpha = moffat_alpha(np.asarray(fwhm, float), beta)
    peak = np.maximum(np.asarray(flux, float), 1e-3) * (beta - 1) / (np.pi * alpha**2)
    r = alpha * np.sqrt(np.maximum((peak / FAINT_E) ** (1 / beta) - 1, 0))
    return np.clip(np.ceil(r * 1.2), lo, hi).astype(np.int64)


def add_points(img: np.ndarray, x, y, flux, psf: PSFModel) -> None:
    """Add point sources (0-based ``x``, ``y``; ``flux`` in e-) with the local PSF."""
    x, y, flux = (np.atleast_1d(np.asarray(v, float)) for v in (x, y, flux))
    if x.size == 0:
        return
    fwhm, e, theta = psf.at(x, y)
    alpha = moffat_alpha(fwhm, psf.beta)
    a, b = alpha / np.sqrt(1 - e), alpha * np.sqrt(1 - e)
    half = stamp_half(flux, fwhm * np.sqrt(1 + e), psf.beta)
    # row bands of a fixed height (independent of the thread count, so frames are reproducible)
    height = max(2 * int(half.max()) + 2, BAND_ROWS)
    band = np.clip(np.floor(y + 0.5), 0, img.shape[0] - 1).astype(np.int64) // height
    order = np.argsort(band, kind="stable")
    starts = np.searchsorted(band[order], np.arange(img.shape[0] // height + 2))
    _add_moffat_bands(img, order, starts, x, y, flux, a, b, theta, float(psf.beta), half)


def psf_stamp(psf: PSFModel, x: float, y: float, half: int) -> np.ndarray:
    """The normalised PSF at (x, y) on a (2 half + 1)^2 stamp centred on the pixel."""
    out = np.zeros((2 * half + 1, 2 * half + 1))
    fwhm, e, theta = psf.at(x, y)
    alpha = moffat_alpha(fwhm, psf.beta)
    a, b = alpha / np.sqrt(1 - e), alpha * np.sqrt(1 - e)
    _add_moffat(out, np.array([float(half)]), np.array([float(half)]), np.ones(1), np.atleast_1d(a),
                np.atleast_1d(b), np.atleast_1d(theta), float(psf.beta), np.array([half]))
    return out


def add_trailed(img: np.ndarray, x0, y0, x1, y1, flux, psf: PSFModel, step: float = 0.25) -> None:
    """A source moving uniformly from (x0, y0) to (x1, y1) during the exposure."""
    n = max(1, int(np.ceil(np.hypot(x1 - x0, y1 - y0) / step)))
    t = (np.arange(n) + 0.5) / n
    add_points(img, x0 + t * (x1 - x0), y0 + t * (y1 - y0), np.full(n, flux / n), psf)


def sersic_b(n: float) -> float:
    """b_n with Gamma(2n) = 2 gamma(2n, b_n): half the light inside r_e (Ciotti & Bertin 1999)."""
    return float(gammaincinv(2 * n, 0.5))


def sersic_stamp(x: float, y: float, flux: float, r_e: float, n: float, q: float, pa: float,
                 psf: PSFModel) -> tuple[np.ndarray, int, int]:
    """A Sersic (1968) profile I ~ exp(-b_n [(r/r_e)^(1/n) - 1]) with axis ratio ``q`` and position
    angle ``pa`` (rad from +x), 3x oversampled, convolved with the local PSF and normalised to
    ``flux``: ``(stamp, y0, x0)`` with the stamp's lower-left pixel at (x0, y0). Pure (no image),
    so many run in threads."""
    os = 3
    half = int(np.clip(np.ceil((6 if n > 2 else 4) * r_e + 3 * psf.fwhm), 12, 300))
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    g = (np.arange((2 * half + 1) * os) + 0.5) / os - 0.5 - half
    dy, dx = np.meshgrid(g + iy - y, g + ix - x, indexing="ij")
    c, s = np.cos(pa), np.sin(pa)
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = np.sqrt(u**2 * q + v**2 / q)  # circularised radius
    model = np.exp(-sersic_b(n) * ((r / r_e) ** (1 / n) - 1))
    model = model.reshape(2 * half + 1, os, 2 * half + 1, os).sum(axis=(1, 3))
    kern = psf_stamp(psf, x, y, int(np.ceil(3 * psf.fwhm)))
    model = np.clip(fftconvolve(model, kern, mode="same"), 0, None)
    model *= flux / model.sum()
    return model, iy - half, ix - half


def add_stamp(img: np.ndarray, stamp: np.ndarray, y0: int, x0: int) -> float:
    """Add ``stamp`` with its lower-left pixel at (x0, y0), clipped to the image; returns what was added."""
    ys = slice(max(y0, 0), min(y0 + stamp.shape[0], img.shape[0]))
    xs = slice(max(x0, 0), min(x0 + stamp.shape[1], img.shape[1]))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return 0.0
    part = stamp[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    img[ys, xs] += part.astype(img.dtype)
    return float(part.sum())


def add_line(img: np.ndarray, x0: float, y0: float, pa: float, peak: float, sigma: float) -> float:
    """An infinitely long straight trail through (x0, y0) at angle ``pa`` with a Gaussian
    cross-section of rms ``sigma`` px and ``peak`` e-/px. Returns the electrons added."""
    ny, nx = img.shape
    c, s = np.cos(pa), np.sin(pa)
    w = int(np.ceil(4 * sigma / max(abs(c), abs(s))))
    total = 0.0
    if abs(c) >= abs(s):   # mostly horizontal: walk along x
        xs = np.arange(nx)
        yc = y0 + (xs - x0) * s / c
        for off in range(-w, w + 1):
            yy = np.floor(yc + 0.5).astype(int) + off
            ok = (yy >= 0) & (yy < ny)
            d = (yy[ok] - yc[ok]) * abs(c)
            val = (peak * np.exp(-0.5 * (d / sigma) ** 2)).astype(img.dtype)
            img[yy[ok], xs[ok]] += val
            total += float(val.sum())
    else:
        ys = np.arange(ny)
        xc = x0 + (ys - y0) * c / s
        for off in range(-w, w + 1):
            xx = np.floor(xc + 0.5).astype(int) + off
            ok = (xx >= 0) & (xx < nx)
            d = (xx[ok] - xc[ok]) * abs(s)
            val = (peak * np.exp(-0.5 * (d / sigma) ** 2)).astype(img.dtype)
            img[ys[ok], xx[ok]] += val
            total += float(val.sum())
    return total


def add_cosmic(img: np.ndarray, x: float, y: float, length: float, pa: float, energy: float,
               rng: np.random.Generator) -> float:
    """A sharp cosmic-ray track (no PSF): ``energy`` e- per pixel crossed, with Landau-like
    fluctuations. Returns the electrons deposited."""
    t = np.linspace(-0.5, 0.5, 2 * int(np.ceil(1.5 * length)) + 1) * length   # steps <= 1/3 px, midpoint included
    xx = np.floor(x + t * np.cos(pa) + 0.5).astype(int)
    yy = np.floor(y + t * np.sin(pa) + 0.5).astype(int)
    pix = np.unique(np.stack([yy, xx], 1), axis=0)
    ok = (pix[:, 0] >= 0) & (pix[:, 0] < img.shape[0]) & (pix[:, 1] >= 0) & (pix[:, 1] < img.shape[1])
    pix = pix[ok]
    dep = energy * rng.lognormal(0, 0.4, len(pix))
    np.add.at(img, (pix[:, 0], pix[:, 1]), dep.astype(img.dtype))
    return float(dep.sum())
