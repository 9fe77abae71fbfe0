"""Stamp normalisation shared by training and inference (PyTorch, so it runs on the GPU too).

Input: raw stamps ``(N, 4, S, S)`` as the detection stage cuts them — channels difference,
template, science (electrons, any photometric scale) and SNR (difference / its 1-sigma noise).
Output, per stamp and channel ``c``::

    image channels (0-2):  asinh((c - median(c)) / sigma_c),  sigma_c = 1.4826 * MAD(c)
    SNR channel (3):       asinh(snr)

The robust per-stamp scaling makes the network blind to the sky level, the template's
photometric scale and the exposure time; asinh keeps 5-sigma detections near-linear and
compresses saturated stars to ~10. Non-finite pixels (masked, off the image) become 0 and are
left out of the median. (Medians are torch's lower medians: for an even count of finite pixels
the lower of the two middle values.)
"""
from __future__ import annotations

import numpy as np
import torch

CHANNELS = ("difference", "template", "science", "snr")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = torch.where(torch.isfinite(x), x, torch.nan)
    img = x[:, :3].flatten(2)
    med = torch.nanmedian(img, dim=2, keepdim=True).values
    sigma = 1.4826 * torch.nanmedian((img - med).abs(), dim=2, keepdim=True).values
    # a flat channel (all equal, all masked) has no scale: fall back to its rms, then to 1
    rms = torch.nanmean((img - med) ** 2, dim=2, keepdim=True).sqrt()
    one = torch.ones_like(sigma)
    sigma = torch.where(sigma > 0, sigma, torch.where(rms > 0, rms, one))
    out = torch.cat([torch.asinh((img - med) / sigma).view(x[:, :3].shape), torch.asinh(x[:, 3:])], dim=1)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def normalise(stamps: np.ndarray | torch.Tensor, chunk: int = 4096) -> np.ndarray | torch.Tensor:
    """Normalise raw ``(N, 4, S, S)`` stamps: numpy in, float32 numpy out (in chunks);
    a tensor is normalised where it lives (CPU or GPU) and returned as a tensor."""
    if isinstance(stamps, torch.Tensor):
        if stamps.ndim != 4 or stamps.shape[1] != 4:
            raise ValueError(f"stamps must be (N, 4, S, S), got {tuple(stamps.shape)}")
        return _normalise(stamps.float())
    x = np.asarray(stamps, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 4:
        raise ValueError(f"stamps must be (N, 4, S, S), got {x.shape}")
    out = np.empty_like(x)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = _normalise(torch.from_numpy(x[i:i + chunk])).numpy()
    return out
