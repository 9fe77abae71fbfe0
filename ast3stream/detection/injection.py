"""Artificial point sources for injection-recovery tests of the difference-imaging lanes.

Sources are the frame's own PSF model (:func:`ast3stream.photometry.psf.build_psf` fitted to
its clean stars, PSFEx-like) scaled to ``F = 10^(-0.4 (m - ZP))`` electrons with their photon
noise, added to a calibrated frame before alignment, as in the efficiency measurements of
PTF/ZTF (Frohmaier et al. 2017, ApJS 230, 4). Sites are drawn uniformly on the free area
(unmasked, away from the edges and from the footprints of detected sources) at least
``min_sep`` apart. The completeness curve is the maximum-likelihood fit to the found / missed
injections of

    eff(m) = eff_max / (1 + exp((m - m50) / w)).
"""
from __future__ import annotations

import numpy as np
import sep
from astropy.table import Table
from scipy.ndimage import binary_dilation
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from ..image import Frame
from ..photometry.psf import PSFModel, build_psf


def frame_psf(frame: Frame, cfg, half: int | None = None) -> PSFModel:
    """PSF model of a calibrated frame from the clean stars of its ``SRC`` table, on a stamp of
    half-size ``3 FWHM``; its spatial degree (at most ``cfg.photometry.psf_degree``) keeps at
    least 15 stars per polynomial term, since a noisy model injects noise into the wings."""
    stars = frame.sources[np.asarray(frame.sources["clean"], bool)]
    fwhm = float(np.median(stars["fwhm"]))
    degree = cfg.photometry.psf_degree
    while degree > 0 and len(stars) < 15 * (degree + 1) * (degree + 2) // 2:
        degree -= 1
    return build_psf(frame, stars, half or int(np.clip(np.ceil(3 * fwhm), 5, 30)), degree)


def free_area(frame: Frame, fwhm: float, edge: int, thresh: float = 3.0) -> np.ndarray:
    """True on unmasked pixels at least ``edge`` px inside the frame and ``2 FWHM`` away from the
    sep footprints (``thresh`` sigma per pixel) of existing sources."""
    data = np.ascontiguousarray(frame.data, np.float32)
    bad = np.ascontiguousarray(frame.mask != 0)
    bkg = sep.Background(data, mask=bad)
    sep.set_extract_pixstack(max(300_000, data.size // 10))
    _, seg = sep.extract(data - bkg.back(), thresh, err=bkg.globalrms, mask=bad, minarea=5,
                         segmentation_map=True)
    r = int(np.ceil(2 * fwhm))
    disk = np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r
    busy = binary_dilation((seg > 0) | bad, structure=disk)
    free = ~busy
    free[:edge], free[-edge:], free[:, :edge], free[:, -edge:] = False, False, False, False
    return free


def random_sites(free: np.ndarray, n: int, min_sep: float, rng: np.random.Generator):
    """Up to ``n`` uniform random 0-based ``(x, y)`` on ``free`` pixels, ``min_sep`` px apart."""
    iy, ix = np.nonzero(free)
    order = rng.permutation(len(ix))[: 20 * n]
    x = ix[order] + rng.uniform(-0.5, 0.5, len(order))
    y = iy[order] + rng.uniform(-0.5, 0.5, len(order))
    keep: list[int] = []
    for k in range(len(x)):
        if not keep or np.min(np.hypot(x[k] - x[keep], y[k] - y[keep])) >= min_sep:
            keep.append(k)
            if len(keep) == n:
                break
    return x[keep], y[keep]


def inject(frame: Frame, psf: PSFModel, x, y, flux, rng: np.random.Generator) -> Frame:
    """Copy of ``frame`` with ``flux`` [e-] PSF stars at ``(x, y)`` and their photon noise
    (Gaussian of variance ``max(model, 0)``, so the model's zero-mean noise pixels keep the
    total flux unbiased)."""
    data = np.array(frame.data, np.float32)
    ny, nx = data.shape
    h = psf.half
    stamps = psf.at(x, y) * np.asarray(flux, float)[:, None, None]
    stamps += rng.normal(size=stamps.shape) * np.sqrt(np.clip(stamps, 0, None))
    for s, xi, yi in zip(stamps, np.rint(x).astype(int), np.rint(y).astype(int)):
        y0, x0 = yi - h, xi - h
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(yi + h + 1, ny), min(xi + h + 1, nx)
        data[sy0:sy1, sx0:sx1] += s[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return Frame(data=data, mask=frame.mask.copy(), header=frame.header.copy(), primary=frame.primary.copy(),
                 sources=frame.sources)


def match(cands: Table, x, y, radius: float) -> np.ndarray:
    """Index into ``cands`` of the nearest positive candidate within ``radius`` px of each
    ``(x, y)``, ``-1`` where none."""
    out = np.full(len(np.atleast_1d(x)), -1, int)
    pos = np.flatnonzero(np.asarray(cands["sign"]) > 0) if len(cands) else np.zeros(0, int)
    if len(pos) == 0 or len(out) == 0:
        return out
    d, j = cKDTree(np.c_[np.asarray(cands["x"])[pos], np.asarray(cands["y"])[pos]]).query(
        np.c_[x, y], distance_upper_bound=radius)
    hit = np.isfinite(d)
    out[hit] = pos[j[hit]]
    return out


def efficiency(mag, found, edges) -> Table:
    """Per magnitude bin: ``mag`` (centre), ``n``, ``n_found``, ``eff`` and its binomial ``eff_err``."""
    mag, found = np.asarray(mag, float), np.asarray(found, bool)
    k = np.digitize(mag, edges) - 1
    n = np.bincount(k[(k >= 0) & (k < len(edges) - 1)], minlength=len(edges) - 1)
    nf = np.bincount(k[(k >= 0) & (k < len(edges) - 1) & found], minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = nf / n
        err = np.sqrt(eff * (1 - eff) / n)
    return Table(dict(mag=(edges[1:] + edges[:-1]) / 2, n=n, n_found=nf, eff=eff, eff_err=err))


def completeness_fit(mag, found) -> dict:
    """Maximum-likelihood ``m50``, width ``w`` and ``eff_max`` of the logistic curve (module docstring)."""
    mag, found = np.asarray(mag, float), np.asarray(found, bool)

    def nll(p):
        m50, lw, le = p
        e = np.clip(1 / (1 + np.exp(-le)) / (1 + np.exp(np.clip((mag - m50) / np.exp(lw), -50, 50))), 1e-9, 1 - 1e-9)
        return -np.sum(np.where(found, np.log(e), np.log(1 - e)))

    start = [float(np.median(mag)), np.log(0.2), 4.0]
    p = minimize(nll, start, method="Nelder-Mead", options=dict(xatol=1e-4, fatol=1e-6, maxiter=4000)).x
    return dict(m50=float(p[0]), width=float(np.exp(p[1])), eff_max=float(1 / (1 + np.exp(-p[2]))))


def recover(science: Frame, template: Frame, psf: PSFModel, x, y, mag, zp: float, fwhm_px: float, cfg,
            lane: str, rng: np.random.Generator, radius: float):
    """Inject ``mag`` point sources at full-resolution science pixels ``(x, y)``, run one lane
    (``template`` is that lane's template; QIP aligns at full resolution and bins ``n x n``),
    align, subtract, detect, and match within ``radius`` lane pixels.

    Returns ``(injections, candidates, difference)``; ``injections`` has the lane-template
    pixel ``x, y``, ``mag``, the injected ``flux`` (science electrons), ``usable`` (at least
    ``cfg.detection.edge_px`` lane pixels inside and no mask bit of the difference within
    ``cfg.detection.mask_radius_px``: detection rejects other sites, so efficiencies refer to the
    usable area), ``found``, the matched candidate's ``cand`` index,
    ``mag_rec``, ``flux_rec`` and ``flux_err``.
    """
    from ..alignment import align
    from ..subtraction import subtract
    from .detect import detect

    flux = 10 ** (-0.4 * (np.asarray(mag, float) - zp))
    sci = inject(science, psf, x, y, flux, rng)
    n = cfg.detector.qip_binning if lane == "qip" else 1
    aligned = align(sci, template, cfg, binning=n)
    diff = subtract(aligned, template, cfg)
    cands, _ = detect(diff, aligned, template, fwhm_px / n, zp, cfg.detection, lane=lane, binning=n)
    xt, yt = template.wcs.all_world2pix(*science.wcs.all_pix2world(x, y, 0), 0)
    j = match(cands, xt, yt, radius)
    found = j >= 0
    r, e = cfg.detection.mask_radius_px, cfg.detection.edge_px
    ny, nx = diff.mask.shape
    usable = np.array([e <= cx < nx - e and e <= cy < ny - e
                       and not diff.mask[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1].any()
                       for cx, cy in zip(np.rint(xt).astype(int), np.rint(yt).astype(int))])
    pick = lambda col: np.where(found, np.asarray(cands[col], float)[np.maximum(j, 0)], np.nan) \
        if len(cands) else np.full(len(j), np.nan)  # noqa: E731
    inj = Table(dict(x=xt, y=yt, mag=np.asarray(mag, float), flux=flux, usable=usable, found=found, cand=j,
                     mag_rec=pick("mag"), flux_rec=pick("flux"), flux_err=pick("flux_err")))
    return inj, cands, diff
