"""Stamp-level simulator of real and bogus difference-image candidates.

Each candidate is a raw 4-channel stamp (difference, template, science in electrons; SNR in
sigma) drawn from the same physics as the frame simulator: pixel-integrated elliptical Moffat
PSFs (Moffat 1969), sky + read noise + source Poisson noise, a template whose noise is
correlated by the PSF-matching kernel (Alard & Lupton 1998), and a scene of stars and
exponential-disc galaxies common to both epochs.

Real (label 1): a point source at the centre (± 1 px) on empty sky, on a galaxy, or as a
variable star brightening; PSF-optimal SNR log-uniform in ``snr_range``.
Bogus (label 0), the pipeline's usual false positives:

* ``dipole``     star subtracted with a 0.1–0.6 px misregistration
* ``mismatch``   bright star subtracted with a 3–15 % PSF-width mismatch (ring / core)
* ``saturated``  clipped star core, ring residual, optional bleed column, masked (NaN) core
* ``cosmic``     1–6 px sharp track in the science image only (not PSF-convolved)
* ``hotpix``     1–2 hot pixels or a bad-column segment in the science image
* ``trail``      straight satellite / aircraft streak across the stamp
* ``galaxy``     irregular residual of a galaxy nucleus (wider than the PSF, +/- lobes)

Used for unit tests, for the network's pre-training, and for the cloud thumbnails' stars.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

BOGUS_KINDS = ("dipole", "mismatch", "saturated", "cosmic", "hotpix", "trail", "galaxy")
REAL_KINDS = ("isolated", "host", "variable")
KINDS = REAL_KINDS + BOGUS_KINDS


@dataclass(frozen=True)
class LaneModel:
    """Pixel-level parameters of one lane's images (QIP: 3x3-binned)."""

    size: int
    fwhm: tuple[float, float]       #: science PSF FWHM range [px]
    sky: tuple[float, float]        #: sky range [e-/px]
    read_noise: float               #: [e-]
    oversample: int                 #: PSF sub-pixel sampling
    saturation: float               #: [e-]


LANES = {
    "dip": LaneModel(91, (2.3, 4.5), (150.0, 1500.0), 2.5 * 1.6, 2, 60000.0 * 1.6),
    "qip": LaneModel(31, (2.3 / 3, 4.5 / 3), (9 * 150.0, 9 * 1500.0), 3 * 2.5 * 1.6, 5, 9 * 60000.0 * 1.6),
}


def moffat(img: np.ndarray, x0: float, y0: float, flux: float, fwhm: float, beta: float,
           q: float = 1.0, theta: float = 0.0, oversample: int = 1) -> None:
    """Add a pixel-integrated elliptical Moffat of total ``flux`` centred at (x0, y0) in place.

    I(r) = (beta-1)/(pi a b) (1 + r^2)^-beta, r^2 = (u/a)^2 + (v/b)^2, a = fwhm / (2 sqrt(2^(1/beta)-1)),
    b = q a; rendered in a +/- 8 FWHM box.
    """
    ny, nx = img.shape
    half = int(np.ceil(8 * fwhm)) + 1
    xa, xb = max(int(x0) - half, 0), min(int(x0) + half + 1, nx)
    ya, yb = max(int(y0) - half, 0), min(int(y0) + half + 1, ny)
    if xa >= xb or ya >= yb:
        return
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    a, b = alpha, alpha * q
    s = (np.arange(oversample) + 0.5) / oversample - 0.5
    yy = (np.arange(ya, yb)[:, None] + s[None, :]).ravel()[:, None] - y0
    xx = (np.arange(xa, xb)[:, None] + s[None, :]).ravel()[None, :] - x0
    c, sn = np.cos(theta), np.sin(theta)
    u, v = xx * c + yy * sn, -xx * sn + yy * c
    prof = (beta - 1) / (np.pi * a * b) * (1 + (u / a) ** 2 + (v / b) ** 2) ** (-beta)
    prof = prof.reshape(yb - ya, oversample, xb - xa, oversample).mean(axis=(1, 3))
    img[ya:yb, xa:xb] += flux * prof


def _disc(shape, x0, y0, flux, scale, q, theta, blur):
    """Exponential disc (Sersic n=1) blurred by a Gaussian of sigma ``blur`` (the PSF core)."""
    yy, xx = np.indices(shape, dtype=np.float64)
    c, s = np.cos(theta), np.sin(theta)
    u, v = (xx - x0) * c + (yy - y0) * s, -(xx - x0) * s + (yy - y0) * c
    prof = np.exp(-np.hypot(u, v / q) / scale)
    prof = gaussian_filter(prof, blur)
    return flux * prof / (2 * np.pi * scale**2 * q)


@dataclass
class _Epoch:
    fwhm: float
    beta: float
    q: float
    theta: float


def _line(img, x0, y0, angle, amp, width, length=None):
    """Add a straight streak through (x0, y0) with a Gaussian cross-section of sigma ``width``."""
    yy, xx = np.indices(img.shape, dtype=np.float64)
    d = -(xx - x0) * np.sin(angle) + (yy - y0) * np.cos(angle)
    prof = np.exp(-0.5 * (d / width) ** 2)
    if length is not None:
        t = (xx - x0) * np.cos(angle) + (yy - y0) * np.sin(angle)
        prof *= np.abs(t) <= length / 2
    img += amp * prof


def simulate_stamp(kind: str, lane: str, rng: np.random.Generator,
                   snr_range: tuple[float, float] = (8.0, 300.0)) -> tuple[np.ndarray, float, float]:
    """One raw stamp ``(4, S, S)`` float32 of the given kind, its candidate SNR and science FWHM [px]."""
    m = LANES[lane]
    S = m.size
    c0 = (S - 1) / 2
    sci_psf = _Epoch(rng.uniform(*m.fwhm), rng.uniform(2.5, 4.5), rng.uniform(0.85, 1.0), rng.uniform(0, np.pi))
    tmpl_psf = _Epoch(sci_psf.fwhm * rng.uniform(0.75, 1.25), rng.uniform(2.5, 4.5), rng.uniform(0.85, 1.0),
                      rng.uniform(0, np.pi))
    sky = rng.uniform(*m.sky)
    sky_t = sky * rng.uniform(0.5, 2.0)
    n_stack = rng.integers(1, 6)                       # template = stack of n exposures
    var_s = sky + m.read_noise**2
    var_t = (sky_t + m.read_noise**2) / n_stack
    tscale = rng.uniform(0.5, 2.0)                     # template photometric scale (raw units)
    # point-source noise: sigma_psf = sqrt(var * NEA), NEA ~ 4 pi (fwhm/2.355)^2 (Gaussian)
    nea = 4 * np.pi * (sci_psf.fwhm / 2.3548) ** 2
    sig_psf = np.sqrt((var_s + var_t) * max(nea, 1.0))

    def psf(img, x, y, f, ep: _Epoch, scale=1.0):
        moffat(img, x, y, f, ep.fwhm * scale, ep.beta, ep.q, ep.theta, m.oversample)

    # common scene: stars and a galaxy or two, anywhere in the stamp
    scene_s, scene_t, diff = (np.zeros((S, S)) for _ in range(3))
    for _ in range(rng.poisson(rng.uniform(0, 4))):
        x, y = rng.uniform(-3, S + 2, 2)
        f = sig_psf * 10 ** rng.uniform(0.5, 3.5)
        if np.hypot(x - c0, y - c0) < 3 * sci_psf.fwhm:
            continue                                   # keep the centre for the candidate
        psf(scene_s, x, y, f, sci_psf)
        psf(scene_t, x, y, f, tmpl_psf)
    for _ in range(rng.poisson(0.5)):
        x, y = rng.uniform(0, S, 2)
        g = (sig_psf * 10 ** rng.uniform(1, 3), rng.uniform(1, 4) * sci_psf.fwhm, rng.uniform(0.3, 1),
             rng.uniform(0, np.pi))
        scene_s += _disc((S, S), x, y, *g, sci_psf.fwhm / 2.3548)
        scene_t += _disc((S, S), x, y, *g, tmpl_psf.fwhm / 2.3548)

    sci_extra = np.zeros((S, S))                       # science-only signal (also in the difference)
    xc, yc = c0 + rng.uniform(-1, 1, 2)
    snr = float(np.exp(rng.uniform(*np.log(snr_range))))
    mask_core = None
    if kind in REAL_KINDS:
        flux = snr * sig_psf
        if kind == "host":
            gx, gy = np.array([xc, yc]) + rng.normal(0, 1.5 * sci_psf.fwhm, 2)
            g = (flux * 10 ** rng.uniform(-0.5, 1.5), rng.uniform(1, 4) * sci_psf.fwhm, rng.uniform(0.3, 1),
                 rng.uniform(0, np.pi))
            scene_s += _disc((S, S), gx, gy, *g, sci_psf.fwhm / 2.3548)
            scene_t += _disc((S, S), gx, gy, *g, tmpl_psf.fwhm / 2.3548)
        elif kind == "variable":
            f0 = flux * 10 ** rng.uniform(-1, 1)
            psf(scene_s, xc, yc, f0, sci_psf)
            psf(scene_t, xc, yc, f0, tmpl_psf)
        psf(sci_extra, xc, yc, flux, sci_psf)
    elif kind == "dipole":
        f = snr * sig_psf * rng.uniform(2, 20)
        d = rng.uniform(0.1, 0.6)
        ang = rng.uniform(0, 2 * np.pi)
        dx, dy = d * np.cos(ang) / 2, d * np.sin(ang) / 2
        psf(scene_s, xc, yc, f, sci_psf)
        psf(scene_t, xc, yc, f, tmpl_psf)
        psf(diff, xc + dx, yc + dy, f, sci_psf)
        psf(diff, xc - dx, yc - dy, -f, sci_psf)
    elif kind == "mismatch":
        f = snr * sig_psf * rng.uniform(5, 50)
        psf(scene_s, xc, yc, f, sci_psf)
        psf(scene_t, xc, yc, f, tmpl_psf)
        psf(diff, xc, yc, f, sci_psf)
        psf(diff, xc, yc, -f * rng.uniform(0.97, 1.03), sci_psf, rng.choice([-1, 1]) * rng.uniform(0.03, 0.15) + 1)
    elif kind == "saturated":
        f = m.saturation * sci_psf.fwhm**2 * rng.uniform(2, 50)
        psf(scene_s, xc, yc, f, sci_psf)
        psf(scene_t, xc, yc, f, tmpl_psf)
        psf(diff, xc, yc, f * rng.uniform(0.01, 0.05), sci_psf)
        psf(diff, xc, yc, -f * rng.uniform(0.01, 0.05), sci_psf, rng.uniform(1.1, 1.5))
        if rng.random() < 0.5:                        # bleed column
            _line(sci_extra, xc, yc, np.pi / 2, m.saturation * rng.uniform(0.1, 0.5), 0.6,
                  rng.uniform(0.2, 1.0) * S)
        mask_core = rng.random() < 0.5
    elif kind == "cosmic":
        n = rng.integers(1, 7)
        ang = rng.uniform(0, 2 * np.pi)
        amp = snr * np.sqrt(var_s + var_t) * rng.uniform(1, 5)
        for i in range(n):
            x, y = xc + i * np.cos(ang), yc + i * np.sin(ang)
            ix, iy = int(round(x)), int(round(y))
            if 0 <= ix < S and 0 <= iy < S:
                sci_extra[iy, ix] += amp * rng.uniform(0.3, 1)
    elif kind == "hotpix":
        amp = snr * np.sqrt(var_s + var_t) * rng.uniform(1, 5)
        ix, iy = int(round(xc)), int(round(yc))
        if rng.random() < 0.7:
            sci_extra[iy, ix] += amp
            if rng.random() < 0.5:
                sci_extra[iy + rng.integers(-1, 2), ix + rng.integers(-1, 2)] += amp * rng.uniform(0.2, 1)
        else:
            n = rng.integers(5, S)
            sci_extra[max(iy - n // 2, 0):iy + n // 2 + 1, ix] += amp / 3
    elif kind == "trail":
        width = sci_psf.fwhm / 2.3548 * rng.uniform(0.5, 1.5)
        amp = snr * np.sqrt(var_s + var_t) / np.sqrt(np.sqrt(2 * np.pi) * width) * rng.uniform(0.5, 2)
        _line(sci_extra, xc, yc, rng.uniform(0, np.pi), amp, width)
    elif kind == "galaxy":
        scale = rng.uniform(1.2, 3) * sci_psf.fwhm
        f = snr * sig_psf * rng.uniform(1, 3) * scale / sci_psf.fwhm
        g = (f, scale, rng.uniform(0.3, 1), rng.uniform(0, np.pi))
        scene_s += _disc((S, S), xc, yc, *[g[0] * 30, *g[1:]], sci_psf.fwhm / 2.3548)
        scene_t += _disc((S, S), xc, yc, *[g[0] * 30, *g[1:]], tmpl_psf.fwhm / 2.3548)
        diff += _disc((S, S), xc, yc, *g, sci_psf.fwhm / 2.3548)
        off = rng.normal(0, scale / 2, 2)
        diff -= _disc((S, S), xc + off[0], yc + off[1], f * rng.uniform(0.3, 1), scale * rng.uniform(0.5, 1.5),
                      rng.uniform(0.3, 1), rng.uniform(0, np.pi), sci_psf.fwhm / 2.3548)
    else:
        raise ValueError(f"unknown kind {kind!r}")

    # noise: science (sky + read + Poisson), template (stacked, then smoothed by the matching kernel)
    sig_s = np.sqrt(var_s + np.clip(scene_s + sci_extra, 0, None))
    sig_t = np.sqrt(var_t + np.clip(scene_t, 0, None) / n_stack)
    n_s = rng.standard_normal((S, S)) * sig_s
    n_t = rng.standard_normal((S, S)) * sig_t
    k = np.sqrt(max(sci_psf.fwhm**2 - tmpl_psf.fwhm**2, 0.0)) / 2.3548
    n_t_matched = gaussian_filter(n_t, k) if k > 0.3 else n_t
    n_t_matched *= sig_t.mean() / max(n_t_matched.std(), 1e-9) if k > 0.3 else 1.0
    science = scene_s + sci_extra + sky + n_s
    template = (scene_t + sky_t + n_t) * tscale
    difference = diff + sci_extra + n_s - n_t_matched
    noise = np.sqrt(sig_s**2 + sig_t**2)
    if kind == "saturated":
        science = np.minimum(science, m.saturation)
        template = np.minimum(template, m.saturation * tscale)
        if mask_core:
            core = np.hypot(*(np.indices((S, S)) - np.array([yc, xc])[:, None, None])) < sci_psf.fwhm
            difference[core] = np.nan
            science[core] = np.nan
    stamp = np.stack([difference, template, science, difference / noise]).astype(np.float32)
    _pipeline_masks(stamp, rng)
    return stamp, snr, sci_psf.fwhm


def _pipeline_masks(stamp: np.ndarray, rng: np.random.Generator, p_edge: float = 0.25,
                    p_blobs: float = 0.3) -> None:
    """What the pipeline's cutouts show near masks, applied in place (to real and bogus alike).

    Frame edge (``p_edge``): beyond a straight border 3+ px from the centre the difference and
    SNR are 0 (masked overlap border) and, further out, template and science are 0 (off the
    image: ``detection.stamps.cutouts`` zero-fills). Masked blobs (``p_blobs``): 1–3 discs off
    the centre where the SNR is 0 (``Difference.snr`` is 0 on masked pixels).
    """
    S = stamp.shape[-1]
    c = (S - 1) / 2
    yy, xx = np.indices((S, S))
    if rng.random() < p_edge:
        ang = rng.choice([0, 0.5, 1, 1.5]) * np.pi + rng.normal(0, 0.05) * (rng.random() < 0.3)
        dist = (xx - c) * np.cos(ang) + (yy - c) * np.sin(ang)         # distance towards the border
        d0 = rng.uniform(3, c - 1)
        masked = dist > d0
        stamp[0][masked] = 0.0
        stamp[3][masked] = 0.0
        off = dist > d0 + rng.uniform(0, 8)
        stamp[1][off] = 0.0
        stamp[2][off] = 0.0
    if rng.random() < p_blobs:
        for _ in range(rng.integers(1, 4)):
            bx, by = rng.uniform(0, S, 2)
            if np.hypot(bx - c, by - c) < 4:
                continue
            stamp[3][np.hypot(xx - bx, yy - by) < rng.uniform(1, 4)] = 0.0


def simulate_set(n_real: int, n_bogus: int, lane: str, seed: int = 0,
                 snr_range: tuple[float, float] = (8.0, 300.0),
                 real_weights=(0.4, 0.45, 0.15), bogus_weights=None) -> dict[str, np.ndarray]:
    """A labelled set: raw ``stamps`` (N,4,S,S) float32, ``label`` (1 = real), ``kind`` (index into KINDS),
    ``snr``, ``fwhm`` (science PSF FWHM [px], for :func:`ast3stream.classify.stamps.pipeline_stamps`).

    The candidate SNR of a bogus stamp is the PSF-scale amplitude it was drawn with.
    """
    rng = np.random.default_rng(seed)
    bw = np.ones(len(BOGUS_KINDS)) if bogus_weights is None else np.asarray(bogus_weights, float)
    kinds = np.concatenate([
        rng.choice(len(REAL_KINDS), n_real, p=np.asarray(real_weights) / np.sum(real_weights)),
        len(REAL_KINDS) + rng.choice(len(BOGUS_KINDS), n_bogus, p=bw / bw.sum()),
    ])
    size = LANES[lane].size
    stamps = np.empty((len(kinds), 4, size, size), np.float32)
    snr = np.empty(len(kinds), np.float32)
    fwhm = np.empty(len(kinds), np.float32)
    for i, k in enumerate(kinds):
        stamps[i], snr[i], fwhm[i] = simulate_stamp(KINDS[k], lane, rng, snr_range)
    label = (kinds < len(REAL_KINDS)).astype(np.int8)
    order = rng.permutation(len(kinds))
    return dict(stamps=stamps[order], label=label[order], kind=kinds[order].astype(np.int8), snr=snr[order],
                fwhm=fwhm[order])
