"""Hand-made real/bogus features measured on the model stamp itself (one function for every source).

:func:`stamp_features` takes the model inputs of :mod:`.stamps` (N, 4, SIZE, SIZE: asinh of
difference, template, science, SNR in noise units, ``PX_PER_FWHM`` pixels per PSF FWHM, negatives
flipped, masked pixels 0), so training sets, the pipeline's own candidates and foreign alerts get
their features from the very stamps the network sees, in PSF units whatever the survey. These are
the quantities of the classic feature-based classifiers (Bloom et al. 2012; Brink et al. 2013;
Goldstein et al. 2015, autoScan; ZTF's ``rb`` before braai, Mahabal et al. 2019): a PSF fit of
the difference (its chi^2 and amplitude), the difference source's size and elongation (weighted
second moments), the share of negative and masked pixels, the difference/science flux ratio, the
reference source under or near the candidate, and the other residuals in the stamp.

Every feature is a function of radii and of sums over annuli, eigenvalues of second moments or
extrema, so it is invariant to 90-degree rotations and mirror flips of the stamp (up to float
rounding), like the network. Pixel values are ``sinh`` of the input; each channel's noise
``sigma`` is the robust sigma of its outer annulus (r > 3 FWHM), so flux-like features are
signal-to-noise ratios on the stamp's own noise, independent of the zoom of :mod:`.stamps`.
"""
from __future__ import annotations

import numpy as np

from .stamps import PX_PER_FWHM, SIZE

NAMES = ("peak_snr", "psf_snr", "psf_chi2", "size", "elongation", "offset", "concentration",
         "neg_share", "neg_pix", "masked_core", "masked_all", "diff_sci_ratio", "sci_tpl_ratio",
         "tpl_core_snr", "tpl_source_dist", "sigma_ratio", "other_residuals")

_C = (SIZE - 1) / 2
_YY, _XX = np.indices((SIZE, SIZE)) - _C
_R = np.hypot(_YY, _XX)
_CORE = _R <= PX_PER_FWHM                       # within 1 FWHM of the centre
_AP = _R <= 2 * PX_PER_FWHM                     # PSF-fit and moment aperture, 2 FWHM
_OUTER = _R > 3 * PX_PER_FWHM
_SIG = PX_PER_FWHM / 2.3548
_GAUSS = np.exp(-_R**2 / (2 * _SIG**2))          # the PSF (a Gaussian of 1 FWHM) at the centre


def _sigma(v: np.ndarray) -> np.ndarray:
    """Robust sigma (1.4826 MAD) of each stamp's outer annulus, ignoring exact zeros (masked)."""
    out = np.ones(len(v))
    for i, o in enumerate(v[:, _OUTER]):
        o = o[o != 0]
        if o.size > 10:
            s = 1.4826 * np.median(np.abs(o - np.median(o)))
            out[i] = s if s > 0 else 1.0
    return out


def stamp_features(x: np.ndarray) -> np.ndarray:
    """Features (N, len(NAMES)) float64 of model inputs ``x`` (N, 4, SIZE, SIZE); see ``NAMES``:

    ``peak_snr`` max SNR channel within 1 FWHM (the trivial baseline); ``psf_snr``, ``psf_chi2``
    the amplitude (in the difference's noise) and reduced chi^2 of a fixed-position PSF fit within
    2 FWHM; ``size`` (in FWHM) and ``elongation`` (axis ratio >= 1) from the difference's
    PSF-weighted second moments; ``offset`` of its first moment [FWHM]; ``concentration`` peak /
    aperture sum; ``neg_share`` negative / (negative + positive) flux within 2 FWHM, ``neg_pix`` share of
    pixels below -3 sigma there; ``masked_core``, ``masked_all`` share of masked (exact 0)
    difference pixels within 2 FWHM and in the stamp; ``diff_sci_ratio``, ``sci_tpl_ratio``
    aperture SNRs difference / science and science / template; ``tpl_core_snr`` the template's
    aperture SNR under the candidate; ``tpl_source_dist`` distance [FWHM] of the nearest
    template pixel above 5 sigma (4 FWHM when none; not the brightest: an argmax flips between
    near-equal pixels under rotation); ``sigma_ratio`` outer-annulus sigma of the
    SNR channel over that of the difference channel (the producer's noise map against the stamp's
    own noise); ``other_residuals`` share of outer difference pixels beyond 5 sigma.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 4 or x.shape[1:] != (4, SIZE, SIZE):
        raise ValueError(f"expected model inputs (N, 4, {SIZE}, {SIZE}), got {x.shape}")
    v = np.sinh(x)
    d, t, s, q = v[:, 0], v[:, 1], v[:, 2], v[:, 3]
    sd, st, ss, sq = _sigma(d), _sigma(t), _sigma(s), _sigma(q)
    n_ap = _AP.sum()
    g = _GAUSS[_AP]
    dap = d[:, _AP]
    amp = dap @ g / (g @ g)
    resid = dap - amp[:, None] * g
    psf_snr = amp * np.sqrt(g @ g) / sd
    psf_chi2 = (resid**2).sum(1) / (sd**2 * (n_ap - 1))
    w = np.clip(dap, 0, None) * g                                   # PSF-weighted positive flux
    wsum = w.sum(1) + 1e-12
    my, mx = (w * _YY[_AP]).sum(1) / wsum, (w * _XX[_AP]).sum(1) / wsum
    iyy = (w * (_YY[_AP] - my[:, None]) ** 2).sum(1) / wsum
    ixx = (w * (_XX[_AP] - mx[:, None]) ** 2).sum(1) / wsum
    ixy = (w * (_YY[_AP] - my[:, None]) * (_XX[_AP] - mx[:, None])).sum(1) / wsum
    half_tr, det = (ixx + iyy) / 2, np.sqrt(((ixx - iyy) / 2) ** 2 + ixy**2)
    l1, l2 = half_tr + det, np.clip(half_tr - det, 1e-6, None)
    # a PSF-weighted Gaussian of sigma s has weighted second moment s^2 SIG^2 / (s^2 + SIG^2)
    m2 = np.clip((l1 + l2) / 2, 1e-6, _SIG**2 * 0.999)
    size = np.sqrt(m2 * _SIG**2 / (_SIG**2 - m2)) / _SIG
    pos = np.clip(dap, 0, None).sum(1)
    neg = np.clip(-dap, 0, None).sum(1)

    def ap_snr(c, sig):
        return c[:, _CORE].sum(1) / (sig * np.sqrt(_CORE.sum()))

    d_ap, s_ap, t_ap = ap_snr(d, sd), ap_snr(s, ss), ap_snr(t, st)
    bright = (t > 5 * st[:, None, None]).reshape(len(t), -1)
    dist = np.where(bright, _R.ravel(), 4.0 * PX_PER_FWHM).min(1) / PX_PER_FWHM
    return np.column_stack([
        q[:, _CORE].max(1),
        psf_snr,
        np.log10(psf_chi2 + 1e-3),
        np.log10(size + 1e-3),
        np.sqrt(l1 / l2),
        np.hypot(my, mx) / PX_PER_FWHM,
        d[:, _CORE].max(1) / (np.abs(d[:, _AP]).sum(1) + 1e-9),
        neg / (pos + neg + 1e-9),
        (dap < -3 * sd[:, None]).mean(1),
        (dap == 0).mean(1),
        (d == 0).reshape(len(d), -1).mean(1),
        np.arctan(d_ap / np.where(np.abs(s_ap) > 1e-3, s_ap, 1e-3)),
        np.arctan(s_ap / np.where(np.abs(t_ap) > 1e-3, t_ap, 1e-3)),
        np.arcsinh(t_ap),
        dist,
        np.log10(sq / sd),
        (np.abs(d[:, _OUTER]) > 5 * sd[:, None]).mean(1),
    ])
