"""The one survey-independent stamp: training, the pipeline's own candidates and foreign alerts.

:func:`make_stamp` turns a difference/science/template triplet of any survey into the model's
``(4, SIZE, SIZE)`` input, channels ``difference, template, science, snr``:

1. **Sign.** A negative detection (``positive=False``) becomes a positive one: the difference is
   negated and science and template swap (what brightened is then always "science").
2. **Noise units, native pixels.** Image channels: ``(c - median(c)) / sigma_c`` with the robust
   ``sigma_c = 1.4826 MAD(c)`` of the stamp (rms, then 1, when the MAD is 0). SNR channel:
   ``difference / sigma`` with the producer's per-pixel sigma map when there is one (Rubin's
   ``UNCERT``, our noise map; the pipeline's stamps carry it as their SNR channel), else the
   difference's robust sigma.
3. **Resampling to a fixed sampling in PSF units.** The stamp is resampled about its centre pixel
   to ``PX_PER_FWHM`` model pixels per PSF FWHM (linear interpolation; a Gaussian anti-alias filter
   first when shrinking) and cut to ``SIZE`` x ``SIZE``: the model always sees ``SIZE /
   PX_PER_FWHM`` FWHM whatever the survey's pixel scale or seeing. Noise-unit values are divided by
   the zoom factor ``z`` (model pixels per native pixel): a model pixel of area ``1/z^2`` native
   pixels has ``1/z`` of a native pixel's background-limited SNR, so a source of given SNR looks
   the same on a fine or coarse native grid.
4. **Masks.** Non-finite pixels (masked, saturated, off the image) and model pixels outside the
   native stamp are 0 (the median, in noise units); a missing template (ATLAS) is all 0.
5. ``asinh`` of every channel: near-linear to ~1 sigma, a saturated star ends near 10.

Centred on the native stamp's centre ``((n - 1) / 2)`` and on the model grid's centre, the
mapping commutes with 90-degree rotations, so the rotation-invariant network stays invariant.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

CHANNELS = ("difference", "template", "science", "snr")
SIZE = 32              #: model stamp side [model px]
PX_PER_FWHM = 3.0      #: model pixels per PSF FWHM: the model sees SIZE / PX_PER_FWHM = 10.7 FWHM


def _robust(c: np.ndarray) -> tuple[float, float]:
    good = c[np.isfinite(c)]
    if good.size == 0:
        return 0.0, 1.0
    med = float(np.median(good))
    sigma = 1.4826 * float(np.median(np.abs(good - med)))
    if not sigma > 0:
        sigma = float(np.sqrt(np.mean((good - med) ** 2)))
    return med, sigma if sigma > 0 else 1.0


def _resample(img: np.ndarray, zoom: float, size: int) -> np.ndarray:
    """``img`` (noise units, NaN = no data) on the model grid: 0 where no native data."""
    good = np.isfinite(img)
    data = np.where(good, img, 0.0)
    if zoom < 1:
        s = (1 / zoom - 1) / 2
        data = gaussian_filter(data, s, mode="constant")
        weight = gaussian_filter(good.astype(float), s, mode="constant")
        data = np.where(weight > 1e-3, data / np.maximum(weight, 1e-3), 0.0)
    cy, cx = (img.shape[0] - 1) / 2, (img.shape[1] - 1) / 2
    u = (np.arange(size) - (size - 1) / 2) / zoom
    yy, xx = np.meshgrid(cy + u, cx + u, indexing="ij")
    out = map_coordinates(data, [yy, xx], order=1, mode="constant", cval=0.0)
    inside = map_coordinates(good.astype(float), [yy, xx], order=1, mode="constant", cval=0.0)
    return np.where(inside > 0.5, out, 0.0)


def make_stamp(difference: np.ndarray, science: np.ndarray, template: np.ndarray | None = None, *,
               fwhm_px: float, sigma: np.ndarray | None = None, snr: np.ndarray | None = None,
               positive: bool = True, size: int = SIZE, px_per_fwhm: float = PX_PER_FWHM) -> np.ndarray:
    """The model input ``(4, size, size)`` float32 of one triplet (module docstring).

    ``fwhm_px``: the frame's PSF FWHM in the stamps' pixels. ``sigma``: the difference's 1-sigma
    map, or ``snr`` = difference / sigma already (the pipeline's own stamps); neither: robust sigma.
    """
    if not (fwhm_px > 0 and np.isfinite(fwhm_px)):
        raise ValueError(f"fwhm_px must be a positive number, got {fwhm_px}")
    d = np.asarray(difference, np.float64)
    s = np.asarray(science, np.float64)
    t = np.full_like(d, np.nan) if template is None else np.asarray(template, np.float64)
    if not (d.shape == s.shape == t.shape):
        raise ValueError(f"stamps differ in shape: {d.shape}, {s.shape}, {t.shape}")
    if snr is not None:
        snr = np.asarray(snr, np.float64)
    elif sigma is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = d / np.where(np.asarray(sigma) > 0, sigma, np.nan)
    if not positive:
        d, s, t = -d, t, s
        snr = None if snr is None else -snr
    zoom = px_per_fwhm / fwhm_px
    chans = []
    for c in (d, t, s):
        med, sig = _robust(c)
        chans.append((c - med) / sig)
    chans.append(chans[0] if snr is None else snr)
    return np.stack([np.arcsinh(_resample(c, zoom, size) / zoom) for c in chans]).astype(np.float32)


def pipeline_stamps(stamps: np.ndarray, fwhm_px: float | np.ndarray, positive: np.ndarray | None = None,
                    size: int = SIZE) -> np.ndarray:
    """Model inputs ``(N, 4, size, size)`` of the detection stage's raw stamps ``(N, 4, S, S)``
    (difference, template, science, SNR); ``fwhm_px`` the frame's PSF FWHM (one, or one per stamp),
    ``positive`` per stamp (default: all positive)."""
    stamps = np.asarray(stamps)
    if stamps.ndim != 4 or stamps.shape[1] != 4:
        raise ValueError(f"stamps must be (N, 4, S, S), got {stamps.shape}")
    positive = np.ones(len(stamps), bool) if positive is None else np.asarray(positive, bool)
    fwhm = np.broadcast_to(np.asarray(fwhm_px, float), (len(stamps),))
    out = np.empty((len(stamps), 4, size, size), np.float32)
    for i, (st, pos) in enumerate(zip(stamps, positive)):
        out[i] = make_stamp(st[0], st[2], st[1], fwhm_px=fwhm[i], snr=st[3], positive=bool(pos), size=size)
    return out


def alert_stamp(triplet, size: int = SIZE) -> np.ndarray:
    """Model input of a foreign alert's :class:`ast3stream.alerts.reader.Triplet`."""
    return make_stamp(triplet.difference, triplet.science, triplet.template, fwhm_px=triplet.fwhm_px,
                      sigma=triplet.sigma, positive=triplet.positive, size=size)
