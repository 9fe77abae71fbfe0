"""Master calibration frames: bias, flat and the bad-pixel mask (IRAF ``zerocombine``/``flatcombine``).

Frames are combined with a sigma-clipped mean about the per-pixel median, the clipping scale
being the frame-set noise ``1.4826 MAD(stack - median)`` (one number, robust for few frames).
Each flat is bias-subtracted and scaled by its own median before combining; the master flat is
normalised to median 1. Bad pixels are those whose master-flat response departs from the
local (64x64-block median) response by more than the configured fractions, or whose master
bias lies more than ``bpm_bias_sigma`` robust sigma from its median (hot/dead columns).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
from astropy.io import fits

from ..config import DetectorConfig, ReductionConfig
from .overscan import read_raw


def clipped_mean(stack: np.ndarray, nsigma: float = 3.0, rows: int = 512) -> np.ndarray:
    """Per-pixel mean of ``stack`` (N, ny, nx) rejecting values beyond ``nsigma`` of the median.

    Works in blocks of ``rows`` rows so that the temporaries stay small for full-size frames.
    """
    sample = stack[:, ::7, ::7]
    sigma = 1.4826 * float(np.median(np.abs(sample - np.median(sample, axis=0)))) or 1.0
    out = np.empty(stack.shape[1:], np.float32)
    for y0 in range(0, stack.shape[1], rows):
        block = stack[:, y0:y0 + rows]
        good = np.abs(block - np.median(block, axis=0)) <= nsigma * sigma
        out[y0:y0 + rows] = np.where(good, block, 0).sum(axis=0, dtype=np.float64) / np.maximum(good.sum(axis=0), 1)
    return out


def block_median(image: np.ndarray, block: int = 64) -> np.ndarray:
    """Median of ``block x block`` cells expanded back to the image shape (a cheap smooth map)."""
    ny, nx = image.shape
    by, bx = -(-ny // block), -(-nx // block)
    padded = np.full((by * block, bx * block), np.nan, np.float32)
    padded[:ny, :nx] = image
    cells = np.nanmedian(padded.reshape(by, block, bx, block).swapaxes(1, 2).reshape(by, bx, -1), axis=2)
    return np.repeat(np.repeat(cells, block, 0), block, 1)[:ny, :nx]


def bad_pixel_mask(bias: np.ndarray, flat: np.ndarray, flat_low: float, flat_high: float,
                   bias_sigma: float) -> np.ndarray:
    """Boolean bad-pixel map from a master bias and a normalised master flat."""
    response = flat / np.maximum(block_median(flat), 1e-3)
    bad = ~np.isfinite(response) | (response < flat_low) | (response > flat_high)
    med = np.median(bias[::7, ::7])
    sigma = 1.4826 * np.median(np.abs(bias[::7, ::7] - med))
    if sigma > 0:
        bad |= np.abs(bias - med) > bias_sigma * sigma
    return bad


@numba.njit(parallel=True, cache=True, nogil=True)
def _apply(data, bias, flat, bpm, gain, mask, bad):
    for y in numba.prange(data.shape[0]):
        for x in range(data.shape[1]):
            f = flat[y, x]
            if bpm[y, x]:
                mask[y, x] |= bad
                f = 1.0
            elif f <= 0:
                f = 1.0
            data[y, x] = (data[y, x] - bias[y, x]) * (gain / f)


@dataclass
class Calibration:
    """Master bias (trimmed, overscan-corrected, in raw units), normalised flat and bad-pixel mask."""

    bias: np.ndarray
    flat: np.ndarray
    bpm: np.ndarray
    meta: dict = field(default_factory=dict)

    FILES = {"bias": "master_bias.fits", "flat": "master_flat.fits", "bpm": "bpm.fits"}

    @classmethod
    def build(cls, bias_paths, flat_paths, params: ReductionConfig, detector: DetectorConfig) -> "Calibration":
        """Combine raw bias and flat frames into masters and derive the bad-pixel mask."""
        rc = params
        bias_paths, flat_paths = list(bias_paths), list(flat_paths)
        if not bias_paths or not flat_paths:
            raise ValueError("Calibration.build needs at least one bias and one flat frame")
        shape = read_raw(bias_paths[0], detector).data.shape
        stack = np.empty((max(len(bias_paths), len(flat_paths)),) + shape, np.float32)
        for i, p in enumerate(bias_paths):
            stack[i] = read_raw(p, detector).data
        bias = clipped_mean(stack[:len(bias_paths)], rc.combine_sigma)
        for i, p in enumerate(flat_paths):
            stack[i] = read_raw(p, detector).data
            stack[i] -= bias
            stack[i] /= np.median(stack[i, ::4, ::4])
        flat = clipped_mean(stack[:len(flat_paths)], rc.combine_sigma)
        del stack
        flat /= np.median(flat[::4, ::4])
        bpm = bad_pixel_mask(bias, flat, rc.bpm_flat_low, rc.bpm_flat_high, rc.bpm_bias_sigma)
        meta = {"NBIAS": len(bias_paths), "NFLAT": len(flat_paths), "NBADPIX": int(bpm.sum())}
        return cls(bias, flat, bpm, meta)

    def apply(self, data: np.ndarray, gain: float, mask: np.ndarray, bad_bit: int) -> None:
        """In place, one pass: ``data = gain (data - bias) / flat`` (bad pixels and ``flat <= 0`` are
        not flat-fielded) and ``bad_bit`` set in ``mask`` on the bad pixels. ``data`` and ``mask``
        may be CuPy arrays: the masters then stay on that GPU for the next frames."""
        if self.bias.shape != data.shape:
            raise ValueError(f"frame {data.shape[::-1]} does not match the calibration {self.bias.shape[::-1]}")
        if type(data).__module__.startswith("cupy"):
            import cupy as xp

            bias, divisor, bpm = self.on_device(xp)
            data -= bias
            data *= np.float32(gain) / divisor
            mask[bpm] |= mask.dtype.type(bad_bit)
            return
        _apply(data, self.bias, self.flat, self.bpm, np.float32(gain), mask, mask.dtype.type(bad_bit))

    def on_device(self, xp):
        """Bias, flat divisor (1 on bad pixels and ``flat <= 0``) and bad-pixel map on the GPU, made once
        (a worker does it before it consumes: ~1.4 s for a full-size frame's)."""
        if getattr(self, "_device", None) is None:
            bpm = xp.asarray(self.bpm)
            flat = xp.asarray(self.flat, dtype=xp.float32)
            self._device = (xp.asarray(self.bias, dtype=xp.float32), xp.where(bpm | (flat <= 0), 1, flat), bpm)
        return self._device

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        header = fits.Header({k: v for k, v in self.meta.items()})
        for name, data in (("bias", self.bias.astype(np.float32)), ("flat", self.flat.astype(np.float32)),
                           ("bpm", self.bpm.astype(np.uint8))):
            fits.PrimaryHDU(data, header).writeto(directory / self.FILES[name], overwrite=True)
        return directory

    @classmethod
    def load(cls, directory) -> "Calibration":
        directory = Path(directory)
        arrays = {name: fits.getdata(directory / fname) for name, fname in cls.FILES.items()}
        meta = dict(fits.getheader(directory / cls.FILES["bias"]))
        meta = {k: meta[k] for k in ("NBIAS", "NFLAT", "NBADPIX") if k in meta}
        return cls(arrays["bias"].astype(np.float32), arrays["flat"].astype(np.float32),
                   arrays["bpm"].astype(bool), meta)
