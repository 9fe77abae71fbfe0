"""PSF photometry with a position-dependent PSF (the role PSFEx plays in the paper).

The PSF model is a pixel grid whose every pixel is a polynomial of degree ``psf_degree`` in the
normalised detector position (PSFEx's ``PSFVAR_DEGREES``): stamps of the brightest clean, isolated
stars are centred by a Fourier shift, normalised to unit sum, and fitted pixel by pixel by linear
least squares (stars with outlying residuals are rejected once). Fluxes are linear fits of the
model, shifted to each source's centroid, to the sky-subtracted pixels:
``F = sum(P D / V) / sum(P^2 / V)``, ``sigma_F^2 = 1 / sum(P^2 / V)``, ``V = sigma_sky^2 + max(F P, 0)``
(one re-weighting), masked pixels having zero weight. ``mag_psf`` is tied to the calibrated
aperture magnitudes by a quadratic in position fitted over the zero-point stars.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ..config import PhotometryConfig, SourcesConfig
from ..image import Frame


def _terms(xn, yn, degree: int) -> np.ndarray:
    xn, yn = np.atleast_1d(xn), np.atleast_1d(yn)
    return np.column_stack([xn ** p * yn ** q for n in range(degree + 1) for p, q in ((n - k, k) for k in range(n + 1))])


def fourier_shift(stamps: np.ndarray, dx, dy) -> np.ndarray:
    """Shift (N, S, S) stamps by (dx, dy) pixels (band-limited interpolation)."""
    size = stamps.shape[-1]
    k = np.fft.fftfreq(size)
    phase = np.exp(-2j * np.pi * (np.asarray(dy)[:, None, None] * k[None, :, None]
                                  + np.asarray(dx)[:, None, None] * k[None, None, :]))
    return np.fft.ifft2(np.fft.fft2(stamps) * phase).real


def cutouts(data: np.ndarray, x, y, half: int, fill=0.0) -> np.ndarray:
    """(N, 2 half + 1, 2 half + 1) stamps centred on the nearest pixels (``fill`` off the image)."""
    ny, nx = data.shape
    off = np.arange(-half, half + 1)
    iy = np.rint(y).astype(int)[:, None, None] + off[None, :, None]
    ix = np.rint(x).astype(int)[:, None, None] + off[None, None, :]
    inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    return np.where(inside, data[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)], fill)


@dataclass
class PSFModel:
    """Pixel-grid PSF whose pixels are polynomials in ``x' = 2x/nx - 1, y' = 2y/ny - 1``."""

    coeffs: np.ndarray     #: (n_terms, S, S)
    degree: int
    nx: int
    ny: int
    n_stars: int

    @property
    def half(self) -> int:
        return self.coeffs.shape[-1] // 2

    def at(self, x, y, centred: bool = False) -> np.ndarray:
        """Unit-sum PSF stamps (N, S, S) for sources at ``x, y``: centred on the nearest pixel
        (shifted to the sub-pixel position) unless ``centred``."""
        x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
        t = _terms(2 * x / self.nx - 1, 2 * y / self.ny - 1, self.degree)
        p = np.einsum("nt,tij->nij", t, self.coeffs)
        if not centred:
            p = fourier_shift(p, x - np.rint(x), y - np.rint(y))
        return p / p.sum(axis=(1, 2), keepdims=True)


def build_psf(frame: Frame, stars: Table, half: int, degree: int = 2, max_stars: int = 400) -> PSFModel:
    """Fit a :class:`PSFModel` to the brightest isolated, unmasked stars of ``stars``."""
    ny, nx = frame.shape
    x, y = np.asarray(stars["x"], float), np.asarray(stars["y"], float)
    from scipy.spatial import cKDTree
    d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), 2)
    ok = (d[:, 1] > 2 * half) & (x > half) & (y > half) & (x < nx - 1 - half) & (y < ny - 1 - half)
    sel = np.flatnonzero(ok)[np.argsort(-np.asarray(stars["flux"])[ok])][:max_stars]
    x, y = x[sel], y[sel]
    masked = cutouts(frame.mask, x, y, half, 1).reshape(len(sel), -1).any(axis=1)
    x, y, sel = x[~masked], y[~masked], sel[~masked]
    n_terms = (degree + 1) * (degree + 2) // 2
    while degree > 0 and len(sel) < 3 * n_terms:
        degree -= 1
        n_terms = (degree + 1) * (degree + 2) // 2
    if len(sel) < 3:
        raise ValueError(f"only {len(sel)} isolated unmasked stars for the PSF model")
    stamps = cutouts(frame.data, x, y, half) - np.asarray(stars["bkg"])[sel][:, None, None]
    stamps = fourier_shift(stamps, -(x - np.rint(x)), -(y - np.rint(y)))
    stamps /= stamps.sum(axis=(1, 2), keepdims=True)
    t = _terms(2 * x / nx - 1, 2 * y / ny - 1, degree)
    flat = stamps.reshape(len(x), -1)
    keep = np.ones(len(x), bool)
    for _ in range(2):
        coeffs = np.linalg.lstsq(t[keep], flat[keep], rcond=None)[0]
        chi = np.sqrt(np.sum((flat - t @ coeffs) ** 2, axis=1))
        med = np.median(chi[keep])
        keep = chi < med + 3 * 1.4826 * np.median(np.abs(chi[keep] - med))
    size = 2 * half + 1
    return PSFModel(coeffs.reshape(-1, size, size), degree, nx, ny, int(keep.sum()))


def fit_fluxes(frame: Frame, model: PSFModel, x, y, bkg, sigma_sky: float, mask_bits: int,
               chunk: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear PSF fluxes, their errors and the reduced chi^2 for sources at ``x, y``."""
    x, y, bkg = np.asarray(x, float), np.asarray(y, float), np.asarray(bkg, float)
    flux, err, chi2 = (np.full(len(x), np.nan) for _ in range(3))
    mask = (frame.mask & np.uint16(mask_bits)) != 0
    for s in range(0, len(x), chunk):
        sl = slice(s, s + chunk)
        p = model.at(x[sl], y[sl])
        d = cutouts(frame.data, x[sl], y[sl], model.half) - bkg[sl, None, None]
        good = ~cutouts(mask, x[sl], y[sl], model.half, True)
        var = np.full(d.shape, sigma_sky ** 2)
        for _ in range(2):
            w = good / var
            den = np.sum(p * p * w, axis=(1, 2))
            f = np.sum(p * d * w, axis=(1, 2)) / den
            var = sigma_sky ** 2 + np.clip(f[:, None, None] * p, 0, None)
        flux[sl], err[sl] = f, 1 / np.sqrt(den)
        chi2[sl] = np.sum((d - f[:, None, None] * p) ** 2 * w, axis=(1, 2)) / np.maximum(good.sum(axis=(1, 2)) - 1, 1)
    return flux, err, chi2


def psf_photometry(frame: Frame, sources: Table, params: PhotometryConfig, *, extraction: SourcesConfig) -> Table:
    """``flux_psf``, ``fluxerr_psf``, ``chi2_psf`` and (when ``mag`` is present) ``mag_psf`` for all sources."""
    pc = params
    table = Table(sources, copy=True)
    if "clean" in table.colnames:
        stars = table[np.asarray(table["clean"], bool)]
    else:
        from ..sources import clean_star_list
        stars = clean_star_list(table, extraction)
    fwhm = float(np.median(stars["fwhm"])) if len(stars) else 3.0
    half = int(np.clip(np.ceil(pc.psf_radius_fwhm * fwhm), 5, 30))
    model = build_psf(frame, stars, half, pc.psf_degree)
    sigma_sky = float(np.median(table["bkg_rms"]))
    f, e, c = fit_fluxes(frame, model, table["x"], table["y"], table["bkg"], sigma_sky, extraction.mask_bits)
    table["flux_psf"], table["fluxerr_psf"], table["chi2_psf"] = f, e, c
    table.meta["PSFDEG"], table.meta["PSFNSTAR"], table.meta["PSFHALF"] = model.degree, model.n_stars, half
    if "mag" in table.colnames:
        with np.errstate(divide="ignore", invalid="ignore"):
            m_inst = np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)
        ref = np.asarray(table["zp_star"], bool) if "zp_star" in table.colnames else np.asarray(table["clean"], bool)
        ref &= np.isfinite(m_inst) & np.isfinite(np.asarray(table["mag"], float))
        xn, yn = 2 * np.asarray(table["x"]) / frame.shape[1] - 1, 2 * np.asarray(table["y"]) / frame.shape[0] - 1
        deg = 2 if ref.sum() >= 20 else 0
        t = _terms(xn, yn, deg)
        coef = np.linalg.lstsq(t[ref], (np.asarray(table["mag"], float) - m_inst)[ref], rcond=None)[0]
        table["mag_psf"] = (m_inst + t @ coef).astype(np.float32)
        table["mag_psf_err"] = (2.5 / np.log(10) * e / np.abs(f)).astype(np.float32)
    return table
