"""The 256 x 256 zscale thumbnail (FITS + PNG) that people and the cloud classifier look at.

The frame is mean-binned by ``ny // size`` x ``nx // size`` (the central ``size`` multiple is kept;
masked pixels count as the median), then mapped to [0, 1] with IRAF's zscale limits
(``astropy.visualization.ZScaleInterval``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.visualization import ZScaleInterval

from ..image import Frame


def thumbnail_box(shape: tuple[int, int], size: int = 256) -> tuple[int, int, int, int]:
    """``(oy, ox, fy, fx)``: thumbnail pixel (i, j) is the mean of frame rows ``oy + i fy ...`` and
    columns ``ox + j fx ...`` (``fy``/``fx`` at least 1; offsets 0 for a frame smaller than ``size``)."""
    ny, nx = shape
    fy, fx = max(ny // size, 1), max(nx // size, 1)
    return max((ny - fy * size) // 2, 0), max((nx - fx * size) // 2, 0), fy, fx


def thumbnail(frame: Frame, size: int = 256) -> np.ndarray:
    """Float32 ``size x size`` image scaled to [0, 1] by zscale."""
    oy, ox, fy, fx = thumbnail_box(frame.shape, size)
    data = frame.data[oy:oy + fy * size, ox:ox + fx * size]
    if data.shape != (fy * size, fx * size):       # smaller than the thumbnail: pad with the median
        pad = np.full((fy * size, fx * size), np.median(frame.data), np.float32)
        pad[:data.shape[0], :data.shape[1]] = data
        data = pad
    binned = data.reshape(size, fy, size * fx).mean(axis=1).reshape(size, size, fx).mean(axis=2)
    lo, hi = ZScaleInterval().get_limits(binned)
    return np.clip((binned - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)


def write_thumbnail(thumb: np.ndarray, directory, name: str, header: fits.Header | None = None) -> dict:
    """Write ``<name>_thumb.fits`` and ``<name>_thumb.png``; returns their paths."""
    import matplotlib.image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fits_path, png_path = directory / f"{name}_thumb.fits", directory / f"{name}_thumb.png"
    fits.PrimaryHDU(thumb, header).writeto(fits_path, overwrite=True)
    matplotlib.image.imsave(png_path, thumb, cmap="gray", vmin=0, vmax=1, origin="lower")
    return {"thumbnail": str(fits_path), "thumbnail_png": str(png_path)}
