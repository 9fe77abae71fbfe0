"""Source extraction with sep (Barbary 2016; SExtractor's algorithms, Bertin & Arnouts 1996).

Background: sep's mesh (``sources.mesh``) estimate (:mod:`.background`, a numba port), subtracted;
detection at ``sources.thresh`` times the global background rms with SExtractor's deblending and
(``sources.clean``) cleaning.

Columns (SExtractor names in brackets): ``x``, ``y`` windowed 0-based centroids [XWIN/YWIN,
with ``sigma = 2 r50 / 2.3548``], ``flux``/``fluxerr`` [FLUX_AUTO: Kron ellipse of 2.5 Kron radii,
at least a circle of 3.5 px], ``mag_inst = -2.5 log10 flux`` (99 when ``flux <= 0``), ``a``, ``b``,
``theta`` [A_IMAGE, B_IMAGE, THETA_IMAGE], ``fwhm = 2 sqrt(A_half / pi)`` [FWHM_IMAGE: ``A_half``
the area above half the peak, see :func:`half_max_fwhm`], ``r50`` [FLUX_RADIUS at 0.5], ``elongation = a / b``, ``peak``, ``bkg`` and ``bkg_rms`` (local sky, e- per pixel),
``flag`` (sep extraction flags | aperture flags | 0x100 when a masked pixel lies in the Kron
aperture; masked = ``sources.mask_bits``, by default bad, saturated and trail pixels: cosmic-ray
pixels are already replaced by their interpolation), ``npix`` and ``stellarity`` (see :func:`stellarity`).
"""
from __future__ import annotations

import numba
import numpy as np
import sep
from astropy.table import Table

from ..config import SourcesConfig
from ..image import Frame
from .background import mesh_background

MASKED = 0x100   #: flag bit: the Kron aperture holds masked (bad/saturated/cosmic/trail) pixels
STRIP_MIN_PIXELS = 16_000_000   #: smaller frames are measured in one process


@numba.njit(parallel=True, cache=True, nogil=True)
def _bit_mask(mask, bits, out):
    for y in numba.prange(mask.shape[0]):
        for x in range(mask.shape[1]):
            out[y, x] = (mask[y, x] & bits) != 0


def bit_mask(mask: np.ndarray, bits: int) -> np.ndarray:
    """Boolean ``(mask & bits) != 0`` of a :class:`~ast3stream.image.MaskBits` plane, in one pass."""
    mask = np.ascontiguousarray(mask)
    out = np.empty(mask.shape, bool)
    _bit_mask(mask, mask.dtype.type(bits), out)
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _half_max_area(sub, xs, ys, peaks, radius):
    ny, nx = sub.shape
    out = np.zeros(xs.size, np.float64)
    for i in numba.prange(xs.size):
        cx, cy, r = int(round(xs[i])), int(round(ys[i])), int(np.ceil(radius[i]))
        peak = peaks[i]
        if 1 <= cy < ny - 1 and 1 <= cx < nx - 1:
            # brightest pixel of the 3x3 core, then the Gaussian (log-parabola) peak through it
            by, bx = cy, cx
            for y in range(cy - 1, cy + 2):
                for x in range(cx - 1, cx + 2):
                    if sub[y, x] > sub[by, bx]:
                        by, bx = y, x
            if 1 <= by < ny - 1 and 1 <= bx < nx - 1 and sub[by, bx] > 0:
                logp = np.log(sub[by, bx])
                for dy, dx in ((0, 1), (1, 0)):
                    a, b = sub[by - dy, bx - dx], sub[by + dy, bx + dx]
                    if a > 0 and b > 0:
                        la, lb = np.log(a), np.log(b)
                        curv = la - 2 * logp + lb
                        if curv < 0:
                            logp -= (lb - la) ** 2 / (8 * curv)
                peak = np.exp(logp)
        half, ramp = 0.5 * peak, 0.25 * peak + 1e-12
        n = 0.0
        for y in range(max(cy - r, 0), min(cy + r + 1, ny)):
            for x in range(max(cx - r, 0), min(cx + r + 1, nx)):
                if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
                    n += min(max((sub[y, x] - half) / ramp + 0.5, 0.0), 1.0)
        out[i] = n
    return out


def half_max_fwhm(sub: np.ndarray, x, y, peak, radius) -> np.ndarray:
    """FWHM = 2 sqrt(A / pi), ``A`` the area above ``peak / 2`` within ``radius`` (SExtractor's FWHM_IMAGE).

    The peak is interpolated through the brightest pixel with a log-parabola in x and in y (exact
    for a Gaussian), and each pixel counts ``clip((v - peak/2) / (peak/4) + 1/2, 0, 1)``: a linear
    ramp across the half-maximum level, which makes the area continuous.
    """
    area = _half_max_area(sub, np.asarray(x, np.float64), np.asarray(y, np.float64),
                          np.asarray(peak, np.float64), np.asarray(radius, np.float64))
    return 2.0 * np.sqrt(np.maximum(area, 1.0) / np.pi)


def stellarity(r50: np.ndarray, concentration: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Star-likeness in [0, 1]: closeness to the stellar locus in size and concentration.

    sep has no CLASS_STAR (a neural network). Point sources share the PSF, so they share its
    half-light radius ``r50`` and its concentration ``c = peak r50^2 / flux`` (0.22 for any
    Gaussian; galaxies are less concentrated, cosmic rays and hot pixels more). The locus is the
    median of the ``reference`` sources (bright, unflagged); its spread the robust sigma
    (at least 5 %). ``stellarity = exp(-d^2 / 2)``, ``d^2`` the summed squared normalised
    offsets in ``r50`` and ``c``.
    """
    def scaled(v):
        ref = v[reference]
        centre = np.median(ref)
        spread = max(1.4826 * np.median(np.abs(ref - centre)), 0.05 * abs(centre), 1e-6)
        return (v - centre) / spread
    if reference.sum() < 3:
        return np.full(r50.shape, np.nan)
    d2 = scaled(r50) ** 2 + scaled(concentration) ** 2
    return np.exp(-0.5 * d2)


def measure(sub: np.ndarray, mask: np.ndarray, rms: float, params: SourcesConfig) -> dict[str, np.ndarray]:
    """sep detection and measurement on a background-subtracted image: the catalogue's columns
    (module docstring) less ``id``, ``bkg``, ``bkg_rms`` and ``stellarity``, plus the isophotal
    barycentre ``xbary``, ``ybary`` and the footprint's rows ``ymin``, ``ymax``."""
    sc = params
    sep.set_extract_pixstack(max(300000, sub.size // 20))
    sep.set_sub_object_limit(4096)
    objs = sep.extract(sub, sc.thresh, err=rms, mask=mask, minarea=sc.minarea,
                       deblend_cont=sc.deblend_cont, clean=sc.clean)
    objs = objs[(objs["a"] > 0) & (objs["b"] > 0)]
    x, y, a, b, theta = objs["x"], objs["y"], objs["a"], objs["b"], objs["theta"]
    theta = np.clip(theta, -np.pi / 2 + 1e-6, np.pi / 2 - 1e-6)
    kron, kflag = sep.kron_radius(sub, x, y, a, b, theta, 6.0, mask=mask)
    flux, fluxerr, aflag = sep.sum_ellipse(sub, x, y, a, b, theta, 2.5 * kron, err=rms, gain=1.0,
                                           mask=mask, subpix=1)
    small = kron * np.sqrt(a * b) < 1.75
    if small.any():
        cflux, cerr, cflag = sep.sum_circle(sub, x[small], y[small], 3.5, err=rms, gain=1.0, mask=mask, subpix=1)
        flux[small], fluxerr[small], aflag[small] = cflux, cerr, cflag
    _, _, mflag = sep.sum_ellipse(sub, x, y, a, b, theta, 2.5 * np.maximum(kron, 1.4), mask=mask, subpix=1)
    r50, rflag = sep.flux_radius(sub, x, y, 6.0 * a, 0.5, normflux=flux, subpix=5)
    r50 = np.where(np.isfinite(r50) & (r50 > 0), r50, 0.5)
    xw, yw, wflag = sep.winpos(sub, x, y, 2.0 * r50 / 2.3548, mask=mask, subpix=5)
    moved = ~np.isfinite(xw) | ~np.isfinite(yw) | (np.hypot(xw - x, yw - y) > 2.0 * r50 + 1.0)
    xw, yw = np.where(moved, x, xw), np.where(moved, y, yw)
    flag = (objs["flag"].astype(np.int32) | kflag | aflag | rflag | wflag).astype(np.int32)
    flag |= np.where(mflag & sep.APER_HASMASKED, MASKED, 0).astype(np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), 99.0)
        concentration = objs["peak"] * r50 ** 2 / np.where(flux > 0, flux, np.nan)
    return {"x": xw, "y": yw, "flux": flux, "fluxerr": fluxerr, "mag_inst": mag, "a": a, "b": b, "theta": theta,
            "elongation": a / b, "fwhm": half_max_fwhm(sub, xw, yw, objs["peak"], 3.0 * a + 2.0), "r50": r50,
            "peak": objs["peak"], "npix": objs["npix"].astype(np.int32), "flag": flag,
            "concentration": concentration, "xbary": x, "ybary": y,
            "ymin": objs["ymin"].astype(np.int64), "ymax": objs["ymax"].astype(np.int64)}


def extract(frame: Frame, params: SourcesConfig) -> Table:
    """Detect and measure sources on a reduced frame (electrons); see the module docstring.

    The background is :func:`~.background.mesh_background` (sep's, on all numba threads here). The
    frame is measured in strips (:mod:`.strips`), by the worker pool when it has at least
    :data:`STRIP_MIN_PIXELS` and ``params.workers`` allows more than one process (the catalogue is
    the same). Rows are in order of the isophotal barycentre's ``y``, then ``x``."""
    from . import strips

    sc = params
    data = np.ascontiguousarray(frame.data, dtype=np.float32)
    mask = bit_mask(frame.mask, sc.mask_bits)
    bkg = mesh_background(data, mask, bw=sc.mesh, bh=sc.mesh, fw=3, fh=3)
    n = strips.n_workers(sc.workers) if data.size >= STRIP_MIN_PIXELS else 1
    workers = strips.pool(n)
    if workers is None:
        sub = bkg.subtracted(data)
        cols = strips.extract_strips(sub, mask, bkg.globalrms, sc)
        return catalogue(cols, data, sub, bkg.globalrms, bkg.globalback)
    with strips.allocated((data.shape, np.float32), (mask.shape, bool)) as ((sub_h, sub), (mask_h, shared_mask)):
        bkg.subtracted(data, out=sub)
        shared_mask[...] = mask
        cols = strips.extract_strips(sub, mask, bkg.globalrms, sc, workers, handles=(sub_h, mask_h))
        return catalogue(cols, data, sub, bkg.globalrms, bkg.globalback)


def catalogue(cols: dict, data: np.ndarray, sub: np.ndarray, rms: float, back: float) -> Table:
    """The source table from :func:`measure`'s columns: canonical row order, ``id``, local sky and stellarity."""
    order = np.lexsort((cols["xbary"], cols["ybary"]))
    cols = {k: v[order] for k, v in cols.items()}
    for k in ("xbary", "ybary", "ymin", "ymax"):
        del cols[k]
    concentration = cols.pop("concentration")
    n = len(cols["x"])
    ix = np.clip(np.rint(cols["x"]).astype(int), 0, data.shape[1] - 1)
    iy = np.clip(np.rint(cols["y"]).astype(int), 0, data.shape[0] - 1)
    table = Table({"id": np.arange(n, dtype=np.int32), **cols,
                   "bkg": (data[iy, ix] - sub[iy, ix]).astype(np.float32),
                   "bkg_rms": np.full(n, rms, np.float32)})
    flux, fluxerr, flag = cols["flux"], cols["fluxerr"], cols["flag"]
    snr = np.where(fluxerr > 0, flux / np.where(fluxerr > 0, fluxerr, 1.0), 0.0)
    ref = (flag == 0) & (snr > 50) & np.isfinite(concentration) & (cols["elongation"] < 1.5)
    table["stellarity"] = stellarity(cols["r50"], np.nan_to_num(concentration), ref).astype(np.float32)
    table.meta.update({"BKGRMS": float(rms), "BKGMED": back})
    return table
