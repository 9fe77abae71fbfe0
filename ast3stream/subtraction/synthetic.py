"""Synthetic image pairs (template, science) for tests and benchmarks of the difference imaging.

Stars are pixel-integrated circular Gaussians (an ``erf`` product, so centroids are exact),
on a flat sky with Poisson and read noise, in electrons. The science frame's WCS is the
template's shifted by ``shift`` pixels and rotated by ``rotation_deg``; an optional
transient is added to the science frame only.
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.special import erf

from ..image import Frame, MaskBits


def tan_header(shape, crval=(150.0, 2.0), scale_arcsec=0.41, rotation_deg=0.0, shift=(0.0, 0.0)) -> fits.Header:
    """A TAN WCS header centred on ``crval`` (pixel centre + ``shift``), north up when unrotated."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.crpix = [(nx + 1) / 2 + shift[0], (ny + 1) / 2 + shift[1]]
    t = np.deg2rad(rotation_deg)
    s = scale_arcsec / 3600.0
    w.wcs.cd = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    return w.to_header()


def render_stars(shape, x, y, flux, fwhm: float, out: np.ndarray | None = None) -> np.ndarray:
    """Add pixel-integrated Gaussian stars (0-based centres ``x, y``) to ``out``."""
    out = np.zeros(shape, np.float64) if out is None else out
    sig = fwhm / 2.3548
    r = int(np.ceil(5 * sig)) + 1
    ny, nx = shape
    for xi, yi, fi in zip(x, y, flux):
        x0, y0 = int(round(xi)) - r, int(round(yi)) - r
        xs0, ys0 = max(x0, 0), max(y0, 0)
        xs1, ys1 = min(x0 + 2 * r + 1, nx), min(y0 + 2 * r + 1, ny)
        if xs1 <= xs0 or ys1 <= ys0:
            continue
        ex = erf((np.arange(xs0, xs1 + 1) - 0.5 - xi) / (np.sqrt(2) * sig))
        ey = erf((np.arange(ys0, ys1 + 1) - 0.5 - yi) / (np.sqrt(2) * sig))
        out[ys0:ys1, xs0:xs1] += fi * np.outer(np.diff(ey), np.diff(ex)) / 4.0
    return out


def observe(shape, x, y, flux, fwhm, sky, rng, read_noise=2.5, saturation=None) -> tuple[np.ndarray, np.ndarray]:
    """Noisy image (electrons, sky included) and mask of the given stars."""
    model = render_stars(shape, x, y, flux, fwhm)
    img = rng.poisson(model + sky).astype(np.float32) + rng.normal(0, read_noise, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint16)
    if saturation is not None:
        sat = img >= saturation
        img[sat] = saturation
        mask[sat] |= np.uint16(MaskBits.SATURATED)
    return img, mask


def synthetic_pair(shape=(512, 512), n_stars=300, fwhm=(3.0, 4.0), sky=(300.0, 500.0), zp=27.0,
                   mag_range=(15.0, 21.5), shift=(0.3, -0.6), rotation_deg=0.05, transient=None,
                   saturation=2.0e5, seed=0, scale_arcsec=0.41):
    """Return ``(science, template, truth)``.

    ``fwhm`` and ``sky`` are (template, science); ``transient`` = ``(x, y, mag)`` in template
    pixels. ``truth`` is a Table of the stars in template pixels, with ``truth.meta`` holding
    the transient and the science positions.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    mag = mag_range[0] + (mag_range[1] - mag_range[0]) * rng.power(2.5, n_stars)
    xt = rng.uniform(-10, nx + 10, n_stars)
    yt = rng.uniform(-10, ny + 10, n_stars)
    flux = 10 ** (-0.4 * (mag - zp))
    h_t = tan_header(shape, scale_arcsec=scale_arcsec)
    h_s = tan_header(shape, scale_arcsec=scale_arcsec, rotation_deg=rotation_deg, shift=shift)
    xs, ys = WCS(h_s).all_world2pix(*WCS(h_t).all_pix2world(xt, yt, 0), 0)
    fs, xss, yss = flux, xs, ys
    if transient is not None:
        txs, tys = WCS(h_s).all_world2pix(*WCS(h_t).all_pix2world([transient[0]], [transient[1]], 0), 0)
        fs = np.r_[flux, 10 ** (-0.4 * (transient[2] - zp))]
        xss, yss = np.r_[xs, txs], np.r_[ys, tys]
    img_t, m_t = observe(shape, xt, yt, flux, fwhm[0], sky[0], rng, saturation=saturation)
    img_s, m_s = observe(shape, xss, yss, fs, fwhm[1], sky[1], rng, saturation=saturation)
    for h, f in ((h_t, fwhm[0]), (h_s, fwhm[1])):
        h["GAIN"] = 1.0
        h["FWHM"] = f
        h["MAGZP"] = zp
    truth = Table(dict(x=xt, y=yt, x_sci=xs, y_sci=ys, mag=mag, flux=flux))
    truth.meta["transient"] = transient
    return Frame(img_s, m_s, h_s), Frame(img_t, m_t, h_t), truth
