"""Cosmic-ray masking with astroscrappy (L.A.Cosmic, van Dokkum 2001) on candidate tiles.

L.A.Cosmic on a 150-Mpixel frame takes about a minute on two cores, so it runs only on the
``tile x tile`` cells that hold a candidate: a pixel whose excess over the mean of its four
neighbours is both ``> sigclip`` times its noise ``sqrt(max(d, 0) + rn^2)`` and a large part
(``> 0.4``) of its height above the sky. Stars wider than ~2.5 px fail the second test; cosmic
rays, hits of any shape and hot pixels pass it. Each candidate cell is cleaned with a margin of
``pad`` pixels so the median filters see real neighbours; cells run in a thread pool
(astroscrappy releases the GIL).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import astroscrappy
import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _candidate_cells(data, mask, sky, read_noise, sigclip, tile):
    ny, nx = data.shape
    gy, gx = (ny + tile - 1) // tile, (nx + tile - 1) // tile
    cells = np.zeros((gy, gx), np.bool_)
    rn2 = read_noise * read_noise
    for y in numba.prange(1, ny - 1):
        for x in range(1, nx - 1):
            if mask[y, x]:
                continue
            d = data[y, x]
            excess = d - 0.25 * (data[y - 1, x] + data[y + 1, x] + data[y, x - 1] + data[y, x + 1])
            if excess > 0.4 * (d - sky) and excess * excess > sigclip * sigclip * (max(d, 0.0) + rn2):
                cells[y // tile, x // tile] = True
    return cells


def candidate_cells(data: np.ndarray, mask: np.ndarray, sky: float, read_noise: float, sigclip: float,
                    tile: int) -> np.ndarray:
    """Boolean ``(ceil(ny/tile), ceil(nx/tile))`` map of cells holding an unmasked sharp positive outlier."""
    return _candidate_cells(np.ascontiguousarray(data, np.float32), np.ascontiguousarray(mask, bool),
                            float(sky), float(read_noise), float(sigclip), int(tile))


def detect_cosmics(data: np.ndarray, mask: np.ndarray, read_noise: float, saturation: float,
                   sigclip: float = 4.5, objlim: float = 5.0, niter: int = 2, tile: int = 128,
                   pad: int = 16, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosmic-ray map and cleaned image for an image in electrons (gain 1).

    ``mask`` marks pixels astroscrappy must not use (bad/saturated). Returns ``(crmask, cleaned)``;
    ``cleaned`` is ``data`` with the cosmic-ray pixels replaced by the masked 5x5 median.
    """
    ny, nx = data.shape
    sky = float(np.median(data[::16, ::16]))
    cells = np.argwhere(candidate_cells(data, mask, sky, read_noise, sigclip, tile))
    crmask = np.zeros(data.shape, bool)
    cleaned = data.copy()

    def run(cell):
        y0, x0 = cell[0] * tile, cell[1] * tile
        ya, yb = max(y0 - pad, 0), min(y0 + tile + pad, ny)
        xa, xb = max(x0 - pad, 0), min(x0 + tile + pad, nx)
        m, c = astroscrappy.detect_cosmics(
            data[ya:yb, xa:xb], inmask=mask[ya:yb, xa:xb], sigclip=sigclip, objlim=objlim,
            niter=niter, gain=1.0, readnoise=read_noise, satlevel=saturation, sepmed=True,
            cleantype="medmask", verbose=False)
        iy, ix = slice(y0 - ya, min(y0 + tile, ny) - ya), slice(x0 - xa, min(x0 + tile, nx) - xa)
        out = (slice(y0, min(y0 + tile, ny)), slice(x0, min(x0 + tile, nx)))
        crmask[out] = m[iy, ix]
        cleaned[out] = np.where(m[iy, ix], c[iy, ix], data[out])

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        list(pool.map(run, cells))
    return crmask, cleaned
