"""SFFT difference of an aligned science frame and its template, with noise map and X2NRM.

Steps (Hu et al. 2022 sparse-field mode with our own masks):

1. sky background and rms of both images (:mod:`.background`); sky subtracted;
2. sub-area stars from the template, measured and prior-banned on the science
   (:mod:`.stars`; pixels above 90 % of the header's saturation level are masked); the sharper
   image ``I`` (fitted PSF FWHM, :mod:`.psf`) is convolved, ``J`` is not; in the masked
   pair (zero outside the sub-areas) each sub-area has its local annulus sky removed,
   since the fit cannot absorb pedestals that differ between sub-areas and the zeroed rest;
3. per tile of one shape (:mod:`.tiles`, zero-padded to FFT-friendly sides) SFFT fits ``K`` (half-width
   ``ceil(2 x`` the larger FWHM``)``, capped, :func:`kernel_half_width`) and the differential background
   on the sub-areas (polynomial orders from the config, or 0 with fewer than
   ``min_stars_varying`` stars in the tile) and returns ``D = J - K * I``; tiles are
   blended with linear ramps;
4. noise: ``sigma_D^2 = V_J + q_I K^2 * V_I + sigma_reg^2 |grad(K * I)|^2`` (``*`` is convolution, ``K`` taken at the tile
   centre), ``V`` each image's per-pixel variance (its variance plane, or ``rms^2 +
   max(image, 0) / gain`` with the gain from the header or the pixels, :mod:`.noise`), ``q_I``
   the factor by which the convolved image's measured noise correlation (resampling,
   co-adding) raises the per-pixel variance of ``K * I``, ``sigma_reg`` the stars' residual
   registration scatter (:func:`registration_scatter`, ZOGY's astrometric noise); then the random-aperture check:
   the empirical / predicted noise of aperture sums (radius 1 FWHM) away from sources and
   masks, the prediction including the correlation (``stats['noise_ratio']``, ``NOISERAT``);
5. ``D`` and ``sigma_D`` are put in science units and sign (``S - K * T``, or
   ``(K * S - T) / sum(K)`` when the science is the sharper image);
6. X2NRM: mean, std and robust std (1.4826 MAD) of ``D / sigma_D`` over unmasked pixels,
   which should be ~N(0, 1) (cf. HOTPANTS' X2NRM);
7. photometric calibration of the difference for :mod:`ast3stream.detection`: ``psf_fwhm``,
   the Gaussian matched to the PSF of ``J`` (:func:`~ast3stream.detection.photometry.matched_fwhm`),
   ``apcorr``, total (zero-point aperture) over PSF-fit flux of the sub-area stars, and
   ``errscale``, the factor by which correlated noise (resampling, convolution) makes PSF-flux
   errors larger than the per-pixel noise map says
   (:func:`~ast3stream.detection.photometry.error_scale`);
8. that factor split between the unconvolved image's noise and the convolved one's
   (:meth:`Difference.errscale_at`): on empty sky the convolved noise, correlated over the
   kernel, dominates a PSF fit's error; on a bright galaxy the unconvolved image's Poisson noise
   does, and the sky's factor alone overstated a nuclear transient's error by 6-16 % (DECam).

Masked pixels (any bit but ``INTERP``) are replaced by sky before convolution; the output
mask is the OR of both masks dilated by the larger FWHM (rounded, at least 1 px), plus
``EDGE`` on a frame border of the kernel half-width (SFFT's circular convolution).
"""
from __future__ import annotations

import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..detection.photometry import error_scale, gaussian_psf, matched_fwhm, psf_flux
from ..detection.stamps import array_module, mosaic
from ..image import Frame, MaskBits
from . import engine
from .background import background
from .backend import use_gpu
from .noise import (MIN_INDEPENDENT, correlated_factors, effective_gain, noise_acf, random_apertures,
                    weighted_sum_factor)
from .psf import PSFError, model_fwhm
from .stars import local_sky, pair_stars, select_stars, subarea_labels
from .tiles import fft_shape, tile_shape, tiles

_UNUSABLE = np.uint16(0xFFFF & ~int(MaskBits.INTERP))


@dataclass
class Difference:
    """A difference image in science-image units, its 1-sigma noise, mask and statistics."""

    diff: np.ndarray
    noise: np.ndarray
    mask: np.ndarray
    header: fits.Header = field(default_factory=fits.Header)
    stats: dict = field(default_factory=dict)
    #: uint8, 255 x the fraction of ``noise**2`` from the unconvolved image (None: not known)
    white: np.ndarray | None = None
    #: the noise check's random-aperture sums over their predicted noise (:func:`.noise.aperture_z`),
    #: for pooling the check over several differences of a small field (:func:`.noise.pooled_noise_ratio`)
    aperture_z: np.ndarray | None = None

    @property
    def snr(self) -> np.ndarray:
        return np.where(self.mask == 0, self.diff / self.noise, 0).astype(np.float32)

    def errscale_at(self, x, y) -> np.ndarray:
        """The correlated-noise factor of PSF-fit flux errors at positions ``x, y``.

        ``stats['errscale']`` is measured on empty sky, where the convolved image's noise,
        correlated over the kernel and PSF, dominates a PSF fit's error. On a bright host the
        unconvolved image's own Poisson noise (nearly white) dominates instead, and the sky's
        factor would overstate the error. So the factor is split (step 8 of the module
        docstring): ``sqrt(c_w f + c_c (1 - f))``, ``f`` the PSF-fit-weighted fraction of the
        variance from the unconvolved image (:attr:`white`), ``c_w, c_c`` the two parts'
        factors (``stats['errscale_white']**2``, ``stats['errscale_conv']**2``), calibrated so
        that the sky's ``f`` gives ``errscale``. Without the split: ``errscale`` everywhere."""
        x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
        out = np.full(len(x), float(self.stats.get("errscale", 1.0)))
        if self.white is None or "errscale_white" not in self.stats:
            return out
        from ..detection.stamps import boxes, inside

        fwhm = float(self.stats["psf_fwhm"])
        r = int(np.ceil(1.5 * fwhm))
        cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
        k = np.flatnonzero(inside(self.diff.shape, cx, cy, r))
        if k.size == 0:
            return out
        wt = gaussian_psf(np.zeros(k.size), np.zeros(k.size), fwhm, r) ** 2
        wt = wt / boxes(self.noise, cx[k], cy[k], r).astype(float) ** 2 * (boxes(self.mask, cx[k], cy[k], r) == 0)
        f = boxes(self.white, cx[k], cy[k], r) / 255.0
        norm = wt.sum(axis=(1, 2))
        ok = norm > 0
        f_eff = (wt * f).sum(axis=(1, 2))[ok] / norm[ok]
        cw, cc = self.stats["errscale_white"] ** 2, self.stats["errscale_conv"] ** 2
        out[k[ok]] = np.sqrt(cw * f_eff + cc * (1 - f_eff))
        return out


# --------------------------------------------------------------------------- preparation


class Prepared:
    """Sky-subtracted image, its bad-pixel map, rms and variances, on the compute device.

    ``var`` is the per-pixel variance: from a variance plane (``frame.var``, times ``RSVAR`` for
    a resampled one) plus the source term when the plane lacks it, or else the sky rms squared
    plus ``max(signal, 0) / gain`` (:func:`.noise.effective_gain`); ``acf`` the noise's
    measured autocorrelation (:func:`.noise.noise_acf`)."""

    def __init__(self, frame: Frame, cfg, xp, maximum_filter):
        sc = cfg.subtraction
        h = frame.header
        data = xp.asarray(frame.data, dtype=xp.float32)
        self.mask = xp.asarray(frame.mask, dtype=xp.uint16)
        sat = h.get(sc.saturation_key)
        self.saturation = float(sat) if isinstance(sat, (int, float)) and sat > 0 else None
        if self.saturation is not None:  # saturated cores and bleed trails, grown 2 px
            hot = maximum_filter(data >= np.float32(0.9 * self.saturation), size=5)
            self.mask = self.mask | (hot.astype(xp.uint16) * np.uint16(MaskBits.SATURATED))
        self.bad = (self.mask & _UNUSABLE) != 0
        var = None if frame.var is None else xp.asarray(frame.var, dtype=xp.float32)
        if var is not None:
            self.bad |= ~xp.isfinite(var)
        back, self.rms = background(data, self.bad, sc.background_box, xp)
        self.sub = data - back
        rsvar = xp.float32(h.get("RSVAR", 1.0))
        gain = h.get(sc.gain_key)
        gain = float(gain) if isinstance(gain, (int, float)) and gain > 0 else None
        if gain is not None and "/S" in str(h.get("BUNIT", "")).upper().replace(" ", "") and h.get("EXPTIME"):
            gain *= float(h["EXPTIME"])   # counts/s: variance of the counts over the exposure
        if gain is not None and var is None:
            self.gain, self.gain_method = gain, "header"
        else:
            step = np.s_[::2, ::2] if data.size > 4_000_000 else np.s_[:, :]
            sky = next((float(h[k]) for k in sc.sky_keys if isinstance(h.get(k), (int, float))), None)
            self.gain, self.gain_method = effective_gain(
                *(None if a is None else _to_host(a[step]) for a in (back, self.rms, self.sub, var, self.bad)),
                header_gain=gain, header_sky=sky, rsvar=float(rsvar))
        src = xp.maximum(self.sub, 0) * (rsvar / xp.float32(self.gain)) if np.isfinite(self.gain) else 0
        if var is not None:
            self.var = xp.where(xp.isfinite(var), var, 0) * rsvar + src
        else:
            self.var = self.rms ** 2 + src
        self.acf = noise_acf(self.sub, xp.sqrt(xp.maximum(self.var, 1e-30)), self.bad)


_TEMPLATES: OrderedDict = OrderedDict()   #: keyed by the template's identity, least recently used dropped
_BY_ID: dict = {}                          #: keyed by id(template.data), dropped with the array
_PREPARING: dict = {}                      #: identity -> lock held while that template is prepared
_CACHE_LOCK = threading.Lock()


def _template(template: Frame, cfg, xp, gpu: bool, maximum_filter, key=None, model=None):
    """Prepared template and its sub-area stars. Cached under ``key`` (the template's identity,
    e.g. its product key and version, so a worker reuses it across exposures whatever frame
    object carries it; the last ``subtraction.template_cache`` kept) or, without a key, while
    ``template.data`` lives. A second caller of a template being prepared waits for it rather
    than preparing it again. With a PSF ``model`` of the template, a PSF that cannot be measured
    (too few stars) gives no sub-area stars and the model's FWHM instead of the error."""
    sc = cfg.subtraction
    ident = ((key if key is not None else id(template.data)), gpu, sc.model_dump_json())
    cache = _TEMPLATES if key is not None else _BY_ID
    with _CACHE_LOCK:
        lock = _PREPARING.setdefault(ident, threading.Lock())
    with lock:
        with _CACHE_LOCK:
            if ident in cache:
                if key is not None:
                    _TEMPLATES.move_to_end(ident)
                _PREPARING.pop(ident, None)
                return cache[ident]
        prep = Prepared(template, cfg, xp, maximum_filter)
        host = (lambda a: a.get()) if gpu else (lambda a: a)
        try:
            stars = select_stars(host(prep.sub), host(prep.bad), host(prep.rms), cfg, prep.saturation)
        except PSFError as exc:
            if model is None:
                raise
            stars = Table({k: np.zeros(0) for k in ("x", "y", "xwin", "ywin", "flux", "flux_err", "fwhm")},
                          meta={"fwhm": model_fwhm(model), "psf": None, "psf_error": str(exc)})
        with _CACHE_LOCK:
            cache[ident] = (prep, stars)
            _PREPARING.pop(ident, None)
            if key is None:
                weakref.finalize(template.data, _BY_ID.pop, ident, None)
            while len(_TEMPLATES) > max(1, sc.template_cache):
                _TEMPLATES.popitem(last=False)
        return prep, stars


def _backend(gpu: bool):
    """The array module, ``maximum_filter`` and ``fftconvolve`` of the backend."""
    if gpu:
        import cupy as xp
        from cupyx.scipy.ndimage import maximum_filter
        from cupyx.scipy.signal import fftconvolve
    else:
        xp = np
        from scipy.ndimage import maximum_filter
        from scipy.signal import fftconvolve
    return xp, maximum_filter, fftconvolve


def prepare_template(template: Frame, cfg, key, gpu: bool | None = None, psf_model=None) -> float:
    """Prepare and cache a template (sky, noise, sub-area stars) before its first subtraction,
    as :func:`subtract` would on first use of ``key``; returns the seconds it took (0 when it
    was cached already). A worker calls it when a template is registered or at start, so that
    the first exposure of a field does not pay for it on its alert path."""
    gpu = use_gpu(cfg.subtraction.backend) if gpu is None else gpu
    xp, maximum_filter, _ = _backend(gpu)
    t0 = time.perf_counter()
    _template(template, cfg, xp, gpu, maximum_filter, key, psf_model)
    if gpu:
        xp.cuda.Stream.null.synchronize()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- subtraction


class _Clock:
    """Wall seconds per step (the GPU synchronised at each step's end), summed over repeats."""

    def __init__(self, sync=None):
        self.sync = sync or (lambda: None)
        self.t0 = self.t = time.perf_counter()
        self.steps: dict[str, float] = {}

    def __call__(self, step: str) -> None:
        self.sync()
        t = time.perf_counter()
        self.steps[step] = self.steps.get(step, 0.0) + t - self.t
        self.t = t


def subtract(science_aligned: Frame, template: Frame, cfg, gpu: bool | None = None, template_key=None,
             psf_models: tuple | None = None) -> Difference:
    """SFFT difference ``science - template`` on the template grid (see the module docstring).

    ``psf_models``: ``(science, template)`` PSF model images [image px, unit sum], e.g. the
    files' PSFEx models (:func:`.psf.psfex_model`); used when fewer than 3 sub-area stars are
    usable (small cutouts): SFFT then fits the kernel on the two models (noise-free "stars",
    :func:`_model_subareas`) and the flux scale comes from the stars there are, else the
    exposure times (``stats['kernel_from']``, ``stats['scale_from']``).

    ``template_key`` (hashable, e.g. ``(product key, version)``) identifies the template for the
    cache of its prepared form. ``stats['seconds']`` is the wall time, ``stats['steps']`` its split
    by step; ``stats['noise_ratio']`` the random-aperture empirical/predicted noise (also
    ``NOISERAT`` in the header)."""
    sc = cfg.subtraction
    gpu = use_gpu(sc.backend) if gpu is None else gpu
    xp, maximum_filter, fftconvolve = _backend(gpu)
    clock = _Clock(xp.cuda.Stream.null.synchronize if gpu else None)

    model_sci, model_ref = psf_models if psf_models is not None else (None, None)
    tpl, stars = _template(template, cfg, xp, gpu, maximum_filter, template_key, model_ref)
    clock("template")
    sci = Prepared(science_aligned, cfg, xp, maximum_filter)
    clock("background")
    pairs = pair_stars(stars, sci.sub, sci.bad, sci.rms, cfg)
    clock("stars")
    use = np.asarray(pairs["use"], bool)
    fwhm_ref, fwhm_sci = float(stars.meta["fwhm"]), float(pairs.meta["fwhm_sci"])
    from_models = use.sum() < 3
    if from_models and psf_models is None:
        raise RuntimeError(f"only {use.sum()} usable sub-area stars; cannot fit the matching kernel "
                           "(give the frames' PSF models)")
    if from_models:
        fwhm_sci = model_fwhm(model_sci)
        fwhm_ref = model_fwhm(model_ref)
    conv = {"ref": "REF", "sci": "SCI"}.get(sc.force_conv, "REF" if fwhm_ref <= fwhm_sci else "SCI")
    (I, J) = (tpl, sci) if conv == "REF" else (sci, tpl)
    fwhm_max = max(fwhm_ref, fwhm_sci)
    fwhm_j = fwhm_sci if conv == "REF" else fwhm_ref
    r_ap = max(1.0, sc.noise_aperture_fwhm * fwhm_j)   # radius of the noise check's apertures

    bad = tpl.bad | sci.bad
    radius = max(sc.subarea_fwhm * fwhm_max, 6.0)
    xs, ys = np.asarray(pairs["x"][use]), np.asarray(pairs["y"][use])
    label = subarea_labels(bad.shape, xs, ys, radius, xp)
    zero = xp.float32(0)
    Ifill, Jfill = xp.where(bad, zero, I.sub), xp.where(bad, zero, J.sub)
    inside = (label > 0) & ~bad
    mI, mJ = ((xp.where(inside, P.sub - xp.asarray(np.r_[0, local_sky(P.sub, P.bad, xs, ys, radius, radius + 6)],
                                                     dtype=xp.float32)[label], zero))
              for P in (I, J))
    scale_from = "stars"
    if from_models:
        scale, scale_from = _flux_scale(pairs, use, sci, tpl, 3.0 * fwhm_max)
        models = (model_ref, model_sci) if conv == "REF" else (model_sci, model_ref)
        amp = (1.0, scale) if conv == "REF" else (scale, 1.0)
    clock("subareas")

    shape = bad.shape
    tshape = tile_shape(shape, cfg)
    hw = sc.kernel_half_width
    if sc.kernel_half_width_ratio is not None:  # per pair: a new SFFT configuration (compiled) per distinct width
        hw = kernel_half_width(fwhm_max, tshape, sc.kernel_half_width, sc.kernel_half_width_ratio)
        cfg = cfg.model_copy(update={"subtraction": sc.model_copy(update={"kernel_half_width": hw})})
        sc = cfg.subtraction
    layout = tiles(shape, tshape, sc.tile_overlap, hw)
    diff = xp.zeros(shape, xp.float32)
    noise = xp.zeros(shape, xp.float32)
    white = xp.zeros(shape, xp.float32)
    ratios, parts, kernels = [], [], []
    sig_reg = 0.0 if from_models else registration_scatter(pairs)
    constant = cfg.model_copy(update={"subtraction": sc.model_copy(
        update={"kernel_poly_order": 0, "background_poly_order": 0})})
    ny_t, nx_t = layout[0][2].shape
    fy, fx = fft_shape((ny_t, nx_t))
    padded = xp.zeros((fx, fy), xp.float64)  # SFFT's [x, y] order

    def T(a, sy, sx):
        out = padded.copy()
        out[:nx_t, :ny_t] = a[sy, sx].T
        return out

    for sy, sx, w in layout:
        n_in = np.sum((xs >= sx.start) & (xs < sx.stop) & (ys >= sy.start) & (ys < sy.stop))
        tcfg = cfg if n_in >= sc.min_stars_varying else constant
        if from_models:
            mI, mJ = (_model_subareas(m, a, (ny_t, nx_t), hw, xp) for m, a in zip(models, amp))
            sol, d = engine.solve(T(Ifill, sy, sx), T(Jfill, sy, sx), T(mI, np.s_[:], np.s_[:]),
                                  T(mJ, np.s_[:], np.s_[:]), tcfg, gpu)
        else:
            sol, d = engine.solve(*(T(a, sy, sx) for a in (Ifill, Jfill, mI, mJ)), tcfg, gpu)
        d = d[:nx_t, :ny_t]
        clock("sfft")
        k = engine.kernel_at(sol, (fx, fy), tcfg, (nx_t - 1) / 2, (ny_t - 1) / 2)
        ratio = float(k.sum())
        ratios.append(ratio)
        kernels.append(k)
        q_i, ap_i = correlated_factors(I.acf, k, r_ap)   # I's noise is correlated, then convolved
        vJ = J.var[sy, sx]
        vI = fftconvolve(I.var[sy, sx], xp.asarray(k ** 2 * q_i, dtype=xp.float32), mode="same")
        var = vJ + vI
        ok = ~bad[sy, sx][::8, ::8]
        med = [float(xp.median(v[::8, ::8][ok])) if bool(ok.any()) else 0.0 for v in (vJ, vI)]
        parts.append(((sy.start + sy.stop) / 2, (sx.start + sx.stop) / 2, ap_i, *med))
        d = d.T
        if sig_reg > 0:   # registration noise (ZOGY eq. 30): sigma_reg^2 |grad(K * I)|^2, K * I = J - D
            gy, gx = xp.gradient(J.sub[sy, sx] - d.astype(xp.float32))
            var = var + xp.float32(sig_reg ** 2) * (gx * gx + gy * gy)
        sig = xp.sqrt(xp.maximum(var, 0))
        if conv == "SCI":  # D = T - K*S  ->  (K*S - T) / sum(K), in science units
            d, sig = -d / ratio, sig / ratio
        wt = xp.asarray(w, dtype=xp.float32)
        diff[sy, sx] += wt * d.astype(xp.float32)
        noise[sy, sx] += wt * sig.astype(xp.float32)
        white[sy, sx] += wt * (vJ / xp.maximum(var, xp.float32(1e-30))).astype(xp.float32)
        clock("noise")

    mask = _output_mask(tpl.mask | sci.mask, mask_grow(fwhm_max), hw, xp, maximum_filter)
    diff = xp.where(mask & _UNUSABLE, zero, diff)
    noise = xp.where(noise > 0, noise, xp.float32(np.inf))
    clock("mask")
    # boxes for the PSF fits of matched_fwhm (FWHM <= 1.4 fwhm_j) and the total-flux aperture
    r = int(np.ceil(1.4 * max(1.5, 2.5 * cfg.photometry.aperture_factor / 2 / 2.3548) * fwhm_j)) + 2
    (Jsub, Jrms, Jbad), outside, xl, yl = mosaic([J.sub, J.rms, bad], xs[:200], ys[:200], r)  # the brightest
    Jbad |= outside
    if from_models:   # the Gaussian matched to J's model
        mj = models[1]
        c = (mj.shape[0] - 1) / 2
        psf_fwhm = matched_fwhm(mj / mj.max() * 1e4, np.ones(mj.shape), [c], [c], fwhm_j)
    else:
        psf_fwhm = matched_fwhm(Jsub, Jrms, xl, yl, fwhm_j, Jbad)
    stats = dict(backend="cupy" if gpu else "numpy", n_tiles=len(layout), tile_shape=list(layout[0][2].shape),
                 conv=conv, fwhm_sci=fwhm_sci, fwhm_ref=fwhm_ref, psf_fwhm=psf_fwhm, kernel_half_width=hw,
                 flux_ratio=float(np.median(ratios)), n_stars=int(use.sum()), registration_rms=sig_reg,
                 n_banned=int(len(pairs) - use.sum()), kernel_from="psf models" if from_models else "stars",
                 scale_from=scale_from,
                 apcorr=_aperture_correction(Jsub, Jrms, Jbad, xl, yl, psf_fwhm, cfg))
    clock("calibration")
    stats |= x2nrm(diff, noise, mask, xp)
    clock("x2nrm")
    white = xp.rint(xp.clip(white, 0, 1) * 255).astype(xp.uint8)
    diff, noise, mask, white = (_to_host(a) for a in (diff, noise, mask.astype(xp.uint16, copy=False), white))
    clock("to_host")
    stats["errscale"] = error_scale(diff, noise, mask, psf_fwhm)
    stats |= _errscale_split(stats["errscale"], white, mask, J.acf, I.acf, kernels, psf_fwhm)
    clock("errscale")
    check, aperture_z = _noise_check(diff, noise, mask, parts, J.acf, r_ap, sci, tpl, sc)
    r_small = max(1.0, 0.5 * fwhm_j)
    if check["noise_apertures"] < MIN_INDEPENDENT and r_small < r_ap:   # a small cutout: 4x more, smaller apertures
        parts = [(y, x, correlated_factors(I.acf, k, r_small)[1], vJ, vI) for (y, x, _, vJ, vI), k in zip(parts, kernels)]
        check, aperture_z = _noise_check(diff, noise, mask, parts, J.acf, r_small, sci, tpl, sc)
    stats |= check
    stats |= dict(gain_sci=sci.gain, gain_ref=tpl.gain, gain_method_sci=sci.gain_method,
                  gain_method_ref=tpl.gain_method, psf_stars=int(stars.meta["psf"].n_stars) if stars.meta["psf"] else 0)
    clock("noise_check")
    stats["seconds"] = clock.t - clock.t0
    stats["steps"] = clock.steps
    header = template.header.copy()
    for key, name, comment in (("NOISERAT", "noise_ratio", "random-aperture noise, empirical/predicted"),
                               ("FWHMSCI", "fwhm_sci", "[px] science PSF FWHM (fitted)"),
                               ("FWHMREF", "fwhm_ref", "[px] template PSF FWHM (fitted)"),
                               ("X2NRM", "x2nrm_rstd", "robust std of diff/sigma"),
                               ("REGRMS", "registration_rms", "[px] registration noise in the sigma map")):
        if np.isfinite(stats.get(name, np.nan)):
            header[key] = (round(float(stats[name]), 4), comment)
    header["CONVDIR"] = (conv, "image convolved by the SFFT kernel")
    header["KERHW"] = (hw, "[px] SFFT kernel half-width")
    return Difference(diff=diff, noise=noise, mask=mask, header=header, stats=stats, white=white, aperture_z=aperture_z)


def registration_scatter(pairs, max_err: float = 0.03, min_stars: int = 5) -> float:
    """Per-axis rms [px] of the sub-area stars' centroid shifts left after alignment (registration
    residuals, differential chromatic refraction ...), from the usable stars whose statistical
    shift error is below ``max_err``: ``median(dx^2 + dy^2) / (2 ln 2)`` (the median of a 2-D
    Gaussian's ``r^2``) less their median squared error; 0 with fewer than ``min_stars`` of them.
    In the sigma map it adds ZOGY's astrometric-noise variance ``sigma_reg^2 |grad(K * I)|^2``
    (Zackay, Ofek & Gal-Yam 2016, eq. 30), so the dipoles that a misregistration of
    ``sigma_reg`` leaves at bright stars are not significant."""
    use = np.asarray(pairs["use"], bool) & (np.asarray(pairs["shift_err"], float) < max_err)
    if use.sum() < min_stars:
        return 0.0
    r2 = np.asarray(pairs["dx"], float)[use] ** 2 + np.asarray(pairs["dy"], float)[use] ** 2
    e2 = np.asarray(pairs["shift_err"], float)[use] ** 2
    return float(np.sqrt(max(0.0, np.median(r2) / (2 * np.log(2)) - np.median(e2))))


def kernel_half_width(fwhm: float, shape: tuple[int, int], largest: int, ratio: float = 2.0) -> int:
    """SFFT kernel half-width for a pair whose broader PSF has FWHM ``fwhm`` [px] on an image of
    ``shape``: ``ceil(ratio fwhm)`` (sfft's Easy packets: ``KerHW = int(KerHWRatio x max(FWHM_REF,
    FWHM_SCI))``, ``KerHWRatio = 2``, clipped to 2-20), at least 2, at most ``largest`` (the
    configured ``kernel_half_width``) and a quarter of the image's shorter side, so the
    ``EDGE`` border of the circular convolution leaves half of a small cutout. The cost of
    SFFT's CPU backend grows with the ``(2 hw + 1)^2`` kernel pixels (its linear system with
    their square); a kernel wider than the PSFs only fits noise."""
    hw = math.ceil(ratio * fwhm) if np.isfinite(fwhm) else largest
    return int(max(2, min(hw, largest, min(shape) // 4)))


def _errscale_split(errscale: float, white, mask, acf_j, acf_i, kernels, fwhm: float) -> dict:
    """``errscale_white`` and ``errscale_conv`` (:meth:`Difference.errscale_at`): the PSF-fit
    variance factors of the unconvolved image's noise (autocorrelation ``acf_j``) and of the
    convolved one's (``acf_i`` convolved with the tiles' kernels, median over tiles),
    :func:`.noise.weighted_sum_factor` with the Gaussian PSF of ``fwhm`` as the weights, both
    scaled so that the sky's median white fraction gives the measured ``errscale``."""
    r = int(np.ceil(1.5 * fwhm))
    p = gaussian_psf(0.0, 0.0, fwhm, r)
    c_w = weighted_sum_factor(acf_j, np.ones((1, 1)), p)
    c_c = float(np.median([weighted_sum_factor(acf_i, k, p) for k in kernels]))
    sky = mask[::4, ::4] == 0
    if not sky.any() or not np.isfinite(errscale):
        return {}
    f = float(np.median(white[::4, ::4][sky])) / 255.0
    cal = errscale ** 2 / (c_w * f + c_c * (1 - f))
    return dict(errscale_white=float(np.sqrt(cal * c_w)), errscale_conv=float(np.sqrt(cal * c_c)),
                white_fraction_sky=f)


def _model_subareas(model: np.ndarray, amp: float, shape, hw: int, xp):
    """A tile-sized image holding one PSF ``model`` (times ``amp``) at its centre and zero
    elsewhere: SFFT's masked input when the kernel is fitted on the PSF models. The model is
    cropped to fit the tile with the kernel's half-width ``hw`` to spare on each side."""
    ny, nx = shape
    h = min(model.shape[0] // 2, (min(ny, nx) - 2 * hw - 3) // 2)
    if h < 2:
        raise RuntimeError(f"tile {shape} too small for a kernel of half-width {hw} on a PSF model")
    c = model.shape[0] // 2
    out = np.zeros(shape, np.float32)
    cy, cx = ny // 2, nx // 2
    out[cy - h:cy + h + 1, cx - h:cx + h + 1] = amp * 1e4 * model[c - h:c + h + 1, c - h:c + h + 1]
    return xp.asarray(out)


def _flux_scale(pairs, use, sci, tpl, radius: float) -> tuple[float, str]:
    """Science / template flux scale without enough sub-area stars (``sci``, ``tpl``: the
    :class:`Prepared` images): the median flux ratio of the usable stars there are, else that of
    the aperture fluxes (``radius``) of every source detected at SNR > 10 in both (galaxies
    included: a large aperture holds their flux whatever the seeing), else 1."""
    import sep

    if use.any():
        return float(np.median(np.asarray(pairs["ratio"], float)[use])), f"{int(use.sum())} star(s)"
    ref = np.ascontiguousarray(_to_host(tpl.sub), np.float32)
    bad = np.ascontiguousarray(_to_host(tpl.bad | sci.bad))
    objs = sep.extract(ref, 5.0, err=np.ascontiguousarray(_to_host(tpl.rms), np.float32), mask=bad, minarea=3)
    if len(objs):
        f = [sep.sum_circle(np.ascontiguousarray(_to_host(P.sub), np.float32), objs["x"], objs["y"], radius,
                            err=np.ascontiguousarray(np.sqrt(_to_host(P.var)), np.float32), mask=bad)
             for P in (sci, tpl)]
        ok = (f[0][0] > 10 * f[0][1]) & (f[1][0] > 10 * f[1][1]) & (f[0][2] == 0) & (f[1][2] == 0)
        if ok.any():
            return float(np.median(f[0][0][ok] / f[1][0][ok])), f"aperture fluxes of {int(ok.sum())} source(s)"
    return 1.0, "none (1)"


def _noise_check(diff, noise, mask, parts, acf_j, r: float, sci, tpl, sc) -> dict:
    """Random-aperture check of the noise map (:func:`.noise.random_apertures`, radius ``r`` [px],
    ``subtraction.noise_aperture_fwhm`` times the unconvolved image's FWHM, at least 1; :func:`subtract`
    checks again at half an FWHM where that leaves fewer than ``MIN_INDEPENDENT``): the
    prediction per aperture is ``sum(sigma^2)`` times the nearest tile's aperture factor, the two
    images' parts weighted by their median per-pixel variances there. Returns the stats
    (``noise_ratio``, its standard error ``noise_ratio_err``, ``noise_apertures`` the independent
    apertures, ``noise_aperture_radius`` ``r``) and the apertures' ``z``."""
    ap_j = correlated_factors(acf_j, np.ones((1, 1)), r)[1]
    cy, cx, fac = (np.array(v) for v in zip(*[(y, x, (ap_j * vJ + ap_i * vI) / (vJ + vI) if vJ + vI > 0 else 1.0)
                                             for y, x, ap_i, vJ, vI in parts]))

    def factor(x, y):
        return fac[np.argmin((y[:, None] - cy) ** 2 + (x[:, None] - cx) ** 2, axis=1)]

    images = [(P.sub, P.var) for P in (sci, tpl)]
    ratio, err, n, z = random_apertures(diff, noise * noise, mask, r, factor, images, n=sc.noise_apertures)
    return dict(noise_ratio=ratio, noise_ratio_err=err, noise_apertures=n, noise_aperture_radius=r,
                aperture_factor=float(np.median(fac))), z


def _to_host(a) -> np.ndarray:
    """NumPy copy of a NumPy or CuPy array; from the GPU through pinned (page-locked) memory, which
    CuPy's pinned pool keeps for the next call, at full PCIe speed."""
    if array_module(a) is np:
        return a
    import cupyx

    out = cupyx.empty_pinned(a.shape, a.dtype)
    a.get(out=out)
    return out


def largest_psf_fwhm(sc) -> float:
    """The broadest PSF FWHM [px] a kernel of ``sc.kernel_half_width`` matches (``ceil(2 FWHM)``,
    :func:`kernel_half_width`): the range a worker warms the width-dependent GPU kernels for."""
    return sc.kernel_half_width / 2


def mask_grow(fwhm: float) -> int:
    """Pixels by which the output mask's bits are dilated for a pair whose broader PSF has ``fwhm``."""
    return max(1, round(fwhm))


def _output_mask(mask, grow: int, border: int, xp, maximum_filter):
    """OR of the input masks, each bit dilated by ``grow`` px, plus ``EDGE`` on the border."""
    out = mask.copy()
    for bit in MaskBits:
        if bit is MaskBits.INTERP:
            continue
        plane = (mask & np.uint16(bit)) != 0
        if bool(plane.any()):
            out |= maximum_filter(plane, size=2 * grow + 1).astype(xp.uint16) * np.uint16(bit)
    edge = np.uint16(MaskBits.EDGE)
    for sl in (np.s_[:border, :], np.s_[-border:, :], np.s_[:, :border], np.s_[:, -border:]):
        out[sl] |= edge
    return out


def _aperture_correction(data, rms, bad, x, y, fwhm: float, cfg) -> float:
    """Median total / PSF-fit flux of the sub-area stars in the unconvolved image. "Total" is
    what the zero point refers to (photometry stage): the flux within ``2.5 x aperture_factor / 2``
    sigma, ``sigma = FWHM / 2.3548`` (the aperture of eq. 1 enlarged 2.5 times)."""
    if len(x) < 3:
        return 1.0
    import sep

    r_tot = 2.5 * cfg.photometry.aperture_factor / 2 * fwhm / 2.3548
    fa, _, _ = sep.sum_circle(np.ascontiguousarray(data, np.float32), x, y, r_tot,
                              mask=np.ascontiguousarray(bad), subpix=5)
    fp, _ = psf_flux(data, rms, x, y, fwhm, mask=bad)
    ok = np.isfinite(fp) & (fp > 0) & np.isfinite(fa)
    return float(np.median(fa[ok] / fp[ok])) if ok.sum() >= 3 else 1.0


def x2nrm(diff, noise, mask, xp=np, max_pixels: int = 2_000_000) -> dict:
    """Mean, std and robust std of ``diff / noise`` over unmasked pixels (a regular subsample)."""
    z = (diff / noise)[mask == 0]
    step = max(1, int(z.size // max_pixels))
    z = z[::step]
    if z.size == 0:
        return dict(x2nrm_mean=float("nan"), x2nrm_std=float("nan"), x2nrm_rstd=float("nan"))
    med = xp.median(z)
    return dict(x2nrm_mean=float(z.mean()), x2nrm_std=float(z.std()),
                x2nrm_rstd=float(1.4826 * xp.median(xp.abs(z - med))))
