"""Stamp normalisation shared by training and inference.

Input: raw stamps ``(N, 4, S, S)`` as the detection stage cuts them — channels difference,
template, science (electrons, any photometric scale) and SNR (difference / its 1-sigma noise).
Output, per stamp and channel ``c``::

    image channels (0-2):  asinh((c - median(c)) / sigma_c),  sigma_c = 1.4826 * MAD(c)
    SNR channel (3):       asinh(snr)

The robust per-stamp scaling makes the network blind to the sky level, the template's
photometric scale and the exposure time; asinh keeps 5-sigma detections near-linear and
compresses saturated stars to ~10. Non-finite pixels (masked, off the image) become 0.
"""
from __future__ import annotations

import warnings

import numpy as np

CHANNELS = ("difference", "template", "science", "snr")


def normalise(stamps: np.ndarray) -> np.ndarray:
    """Normalise raw ``(N, 4, S, S)`` stamps for the real/bogus network (float32)."""
    x = np.asarray(stamps, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 4:
        raise ValueError(f"stamps must be (N, 4, S, S), got {x.shape}")
    x = np.where(np.isfinite(x), x, np.nan)
    out = np.empty_like(x)
    img = x[:, :3].reshape(x.shape[0], 3, -1)
    with warnings.catch_warnings():                 # all-NaN channels are expected (fully masked)
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(img, axis=2, keepdims=True)
        sigma = 1.4826 * np.nanmedian(np.abs(img - med), axis=2, keepdims=True)
        # a flat channel (all equal, all masked) has no scale: fall back to its rms, then to 1
        rms = np.sqrt(np.nanmean((img - med) ** 2, axis=2, keepdims=True))
    sigma = np.where(sigma > 0, sigma, np.where(rms > 0, rms, 1.0))
    out[:, :3] = np.arcsinh((img - med) / sigma).reshape(x[:, :3].shape)
    out[:, 3] = np.arcsinh(x[:, 3])
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
