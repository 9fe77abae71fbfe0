"""Sky background and rms on a grid of boxes: sep's mesh background on CPU (its numba port,
:mod:`ast3stream.sources.background`), the same scheme on GPU.

On the GPU (``background_grid``, which also runs on NumPy arrays), per ``box x box`` cell: median and ``1.4826 MAD`` of unmasked pixels, then once more after
clipping pixels above ``median + 3 rms`` (sources); the cell grid is 3x3 median-filtered
and bilinearly interpolated to full resolution (the SExtractor/sep scheme, without its
mode estimator), so the GPU path never leaves the GPU.
"""
from __future__ import annotations

import numpy as np

from ..detection.stamps import ndimage_module


def _cells(data, mask, box, xp):
    ny, nx = data.shape
    gy, gx = -(-ny // box), -(-nx // box)
    pad = xp.full((gy * box, gx * box), xp.nan, dtype=xp.float32)
    pad[:ny, :nx] = xp.where(mask, xp.nan, data)
    return pad.reshape(gy, box, gx, box).transpose(0, 2, 1, 3).reshape(gy, gx, box * box)


def background(data, mask, box: int = 128, xp=np):
    """``(back, rms)`` full-resolution float32 maps of ``data`` where ``mask`` is False."""
    if xp is np:
        from ..sources.background import mesh_background

        bkg = mesh_background(np.ascontiguousarray(data, np.float32), np.ascontiguousarray(mask),
                              bw=box, bh=box, fw=3, fh=3)
        return bkg.back().astype(np.float32), bkg.rms().astype(np.float32)
    return background_grid(data, mask, box, xp)


def background_grid(data, mask, box: int = 128, xp=np):
    """Box-median background (module docstring) on NumPy or CuPy arrays."""
    ndi = ndimage_module(xp)
    cells = _cells(data, mask, box, xp)
    med = xp.nanmedian(cells, axis=2)
    rms = 1.4826 * xp.nanmedian(xp.abs(cells - med[..., None]), axis=2)
    cells = xp.where(cells > (med + 3 * rms)[..., None], xp.nan, cells)
    med = xp.nanmedian(cells, axis=2)
    rms = 1.4826 * xp.nanmedian(xp.abs(cells - med[..., None]), axis=2)
    out = []
    for grid in (med, rms):
        fill = xp.nanmedian(grid)
        grid = ndi.median_filter(xp.where(xp.isnan(grid), fill, grid), size=3, mode="nearest")
        out.append(_upsample(grid, data.shape, box, xp, ndi).astype(xp.float32))
    return out[0], out[1]


def _upsample(grid, shape, box, xp, ndi):
    """Bilinear interpolation of cell values (at cell centres) to every pixel."""
    ny, nx = shape
    yc = (xp.arange(ny, dtype=xp.float64) - (box - 1) / 2) / box
    xc = (xp.arange(nx, dtype=xp.float64) - (box - 1) / 2) / box
    yc = xp.clip(yc, 0, grid.shape[0] - 1)
    xc = xp.clip(xc, 0, grid.shape[1] - 1)
    y0 = xp.minimum(xp.floor(yc).astype(xp.int64), max(grid.shape[0] - 2, 0))
    x0 = xp.minimum(xp.floor(xc).astype(xp.int64), max(grid.shape[1] - 2, 0))
    y1 = xp.minimum(y0 + 1, grid.shape[0] - 1)
    x1 = xp.minimum(x0 + 1, grid.shape[1] - 1)
    fy = (yc - y0)[:, None]
    fx = (xc - x0)[None, :]
    g = grid.astype(xp.float64)
    return ((1 - fy) * ((1 - fx) * g[y0][:, x0] + fx * g[y0][:, x1])
            + fy * ((1 - fx) * g[y1][:, x0] + fx * g[y1][:, x1]))
