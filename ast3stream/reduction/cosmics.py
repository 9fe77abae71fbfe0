"""Cosmic-ray masking by L.A.Cosmic (van Dokkum 2001): astroscrappy on candidate cells on the host
(:func:`detect_cosmics`), or :func:`lacosmic` on the whole frame on its array module (CuPy where
the frame is on the GPU, NumPy in the tests).

On the host, hits cover well under 0.1 % of a 150-Mpixel frame, and L.A.Cosmic on all of it takes minutes on
two cores, so:

1. one numba pass marks the ``tile x tile`` cells holding a candidate: an unmasked pixel whose
   excess over the mean of its four neighbours is both ``> sigclip`` times its noise
   ``sqrt(max(d, 0) + rn^2)`` and a large part (``> 0.4``) of its height above the sky.
   L.A.Cosmic's Laplacian signal-to-noise (``L+ / 2N`` of the 2x subsampled image) is that same
   excess over the noise, before its median terms, so the cells hold every hit it flags except
   sky-noise peaks within ~10 % of the threshold (its noise comes from the local median, ours
   from the pixel itself); stars wider than ~2.5 px fail the second test, hits of any shape and
   hot pixels pass it;
2. the candidate cells, each with a margin of ``pad`` pixels (off-frame pixels masked), are laid
   side by side in mosaics of up to :data:`GROUP_CELLS` cells and astroscrappy runs once on each
   (thousands of small calls would spend their time in Python and thread start-up), the mosaics
   in parallel in worker processes on a full frame (astroscrappy's own OpenMP threads scale
   poorly). The margin keeps a cell's result independent of its mosaic neighbours (L.A.Cosmic's
   median filters reach 3-4 px; 5 px give the same hits as 8);
3. hits in a cell or within ``pad // 2`` of it (a track's neighbours grown from a hit at the
   cell's edge) go back: they are replaced in place by astroscrappy's masked 5x5 median
   (``cleantype='medmask'``).
"""
from __future__ import annotations

import astroscrappy
import numba
import numpy as np

from ..detection.stamps import array_module, ndimage_module


@numba.njit(parallel=True, cache=True, nogil=True)
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
    """Boolean ``(ceil(ny/tile), ceil(nx/tile))`` map of cells holding an unmasked sharp positive outlier.

    ``mask`` is nonzero where pixels must not be used (any integer or boolean type). A NumPy
    frame goes through one parallel numba pass; any other array module (a CuPy frame) through
    the same test written on whole arrays.
    """
    xp = array_module(data)
    if xp is np:
        return _candidate_cells(np.ascontiguousarray(data, np.float32), np.ascontiguousarray(mask),
                                float(sky), float(read_noise), float(sigclip), int(tile))
    return _candidate_cells_array(data, mask, sky, read_noise, sigclip, tile, xp)


def _candidate_cells_array(d, mask, sky, read_noise, sigclip, tile, xp):
    excess = xp.zeros(d.shape, np.float32)
    excess[1:-1, 1:-1] = d[1:-1, 1:-1] - 0.25 * (d[:-2, 1:-1] + d[2:, 1:-1] + d[1:-1, :-2] + d[1:-1, 2:])
    sharp = ((mask == 0) & (excess > 0.4 * (d - sky))
             & (excess * excess > sigclip * sigclip * (xp.maximum(d, 0) + read_noise * read_noise)))
    ny, nx = d.shape
    gy, gx = -(-ny // tile), -(-nx // tile)
    grid = xp.zeros((gy * tile, gx * tile), bool)
    grid[:ny, :nx] = sharp
    return grid.reshape(gy, tile, gx, tile).any(axis=(1, 3))


def candidate_pixels(data, mask, read_noise: float, sigclip: float, tile: int, pad: int):
    """Where the host path keeps hits: the :func:`candidate_cells` (sky: the median of every 16th
    pixel) and ``pad // 2`` pixels around each (a box), as a boolean image on ``data``'s array
    module; :func:`lacosmic`'s ``allowed`` for the same hits as :func:`detect_cosmics`."""
    xp = array_module(data)
    sky = float(xp.median(data[::16, ::16]))
    cells = candidate_cells(data, mask, sky, read_noise, sigclip, tile)
    ny, nx = data.shape
    out = xp.repeat(xp.repeat(cells, tile, axis=0), tile, axis=1)[:ny, :nx]
    m = pad // 2
    if m:
        out = ndimage_module(xp).binary_dilation(out, structure=xp.ones((2 * m + 1, 2 * m + 1), bool))
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _gather(data, mask, cy, cx, tile, pad, ncol):
    ny, nx = data.shape
    w = tile + 2 * pad
    nrow = (cy.size + ncol - 1) // ncol
    out = np.zeros((nrow * w, ncol * w), np.float32)
    out_mask = np.ones((nrow * w, ncol * w), np.bool_)
    for k in numba.prange(cy.size):
        oy, ox = (k // ncol) * w, (k % ncol) * w
        y0, x0 = cy[k] * tile - pad, cx[k] * tile - pad
        for j in range(w):
            y = min(max(y0 + j, 0), ny - 1)
            for i in range(w):
                x = min(max(x0 + i, 0), nx - 1)
                out[oy + j, ox + i] = data[y, x]
                out_mask[oy + j, ox + i] = mask[y, x] != 0 or y != y0 + j or x != x0 + i
    return out, out_mask


#: candidate cells cleaned per astroscrappy call: the calls, and so the hits, do not depend on the worker count
GROUP_CELLS = 16384


def _clean_group(mosaic, mosaic_mask, read_noise, saturation, sigclip, objlim, niter):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="openmp"):   # the processes share the cores, not the threads
        return astroscrappy.detect_cosmics(
            mosaic, inmask=mosaic_mask, sigclip=sigclip, objlim=objlim, niter=niter, gain=1.0,
            readnoise=read_noise, satlevel=saturation, sepmed=True, cleantype="medmask", verbose=False)


def detect_cosmics(data: np.ndarray, mask: np.ndarray, read_noise: float, saturation: float,
                   sigclip: float = 4.5, objlim: float = 5.0, niter: int = 2, tile: int = 4,
                   pad: int = 5, workers=None) -> np.ndarray:
    """Cosmic-ray hits of an image in electrons (gain 1); ``data`` is cleaned in place.

    ``mask`` is nonzero where astroscrappy must not use a pixel (bad, saturated). Returns the
    ``(n, 2)`` array of hit pixels ``[y, x]``; ``data`` there now holds the masked 5x5 median.
    The cells go to astroscrappy in groups of :data:`GROUP_CELLS`, in the process pool
    ``workers`` (:func:`ast3stream.sources.strips.pool`) when given.
    """
    ny, nx = data.shape
    sky = float(np.median(data[::16, ::16]))
    cells = np.argwhere(candidate_cells(data, mask, sky, read_noise, sigclip, tile))
    if not len(cells):
        return np.zeros((0, 2), np.intp)
    data32, mask_c = np.ascontiguousarray(data, np.float32), np.ascontiguousarray(mask)
    groups = [cells[i:i + GROUP_CELLS] for i in range(0, len(cells), GROUP_CELLS)]
    ncols = [int(np.ceil(np.sqrt(len(g)))) for g in groups]
    mosaics = [_gather(data32, mask_c, g[:, 0].copy(), g[:, 1].copy(), tile, pad, ncol) for g, ncol in zip(groups, ncols)]
    args = [(m, mm, read_noise, saturation, sigclip, objlim, niter) for m, mm in mosaics]
    results = list(workers.map(_clean_group, *zip(*args))) if workers is not None and len(groups) > 1 \
        else [_clean_group(*a) for a in args]
    hits = []
    w, m = tile + 2 * pad, pad // 2
    for g, ncol, (crmask, cleaned) in zip(groups, ncols, results):
        my, mx = np.nonzero(crmask)
        k = (my // w) * ncol + mx // w
        my, mx, k = my[k < len(g)], mx[k < len(g)], k[k < len(g)]
        ly, lx = my % w - pad, mx % w - pad                      # position relative to the cell
        y, x = g[k, 0] * tile + ly, g[k, 1] * tile + lx
        ok = (ly >= -m) & (ly < tile + m) & (lx >= -m) & (lx < tile + m) & (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
        data[y[ok], x[ok]] = cleaned[my[ok], mx[ok]]
        hits.append(y[ok] * nx + x[ok])
    flat = np.unique(np.concatenate(hits))
    return np.column_stack([flat // nx, flat % nx])


def _median(ndi, a, n_sep: int, n_full: int, sepmed: bool):
    """astroscrappy's ``sepmedfilt<n_sep>`` (rows, then columns) or ``medfilt<n_full>``; edges replicated."""
    if sepmed:
        return ndi.median_filter(ndi.median_filter(a, size=(1, n_sep), mode="nearest"), size=(n_sep, 1), mode="nearest")
    return ndi.median_filter(a, size=n_full, mode="nearest")


def subsampled_laplacian(img, xp):
    """L.A.Cosmic's ``L+`` rebinned: the 2x-subsampled image's Laplacian, clipped at 0, block-averaged.

    The subsampled image repeats each pixel ``d`` in a 2x2 block; a sub-pixel's four neighbours
    are two of its own block (``d``) and one horizontal ``h`` and one vertical ``v`` native
    neighbour, so its Laplacian ``4d - d - d - h - v = 2d - h - v``, and the block's mean is

        L+ = 1/4 * sum_{h in {left, right}} sum_{v in {up, down}} max(0, 2d - h - v)

    computed here at native resolution (van Dokkum 2001, eq. 2-4; edges replicated).
    """
    p = xp.pad(img, 1, mode="edge")
    twice = 2 * p[1:-1, 1:-1]
    out = xp.zeros(img.shape, img.dtype)
    for h in (p[1:-1, :-2], p[1:-1, 2:]):
        for v in (p[:-2, 1:-1], p[2:, 1:-1]):
            out += xp.maximum(twice - h - v, 0)
    out *= 0.25
    return out


def _clean_medmask(arrays, bad, ys, xs, fallback, xp):
    """astroscrappy's ``clean_medmask``: each ``(ys, xs)`` pixel of every array of ``arrays`` takes
    the (lower) median of its 5x5 neighbours not ``bad`` (off-frame ones excluded), or
    ``fallback(array)`` where there is none."""
    ny, nx = bad.shape
    o = xp.arange(-2, 3)
    yy, xx = ys[:, None, None] + o[None, :, None], xs[:, None, None] + o[None, None, :]
    ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    flat = (xp.clip(yy, 0, ny - 1) * nx + xp.clip(xx, 0, nx - 1)).reshape(len(ys), 25)
    ok = ok.reshape(len(ys), 25) & ~xp.take(bad, flat)
    k = ok.sum(axis=1)
    pick = xp.maximum(k - 1, 0) // 2
    rows = xp.arange(len(ys))
    empty = bool((k == 0).any())
    for a in arrays:
        v = xp.sort(xp.where(ok, xp.take(a, flat), xp.inf), axis=1)[rows, pick]
        a[ys, xs] = xp.where(k > 0, v, fallback(a)) if empty else v


def lacosmic(data, inmask, read_noise: float, satlevel: float, sigclip: float = 4.5, sigfrac: float = 0.3,
             objlim: float = 5.0, niter: int = 2, sepmed: bool = True, allowed=None):
    """L.A.Cosmic (van Dokkum 2001, PASP 113, 1420) on a NumPy or CuPy image in electrons (gain 1).

    astroscrappy's ``detect_cosmics(..., gain=1, cleantype='medmask', fsmode='median')`` written on
    the array module of ``data`` and its ``ndimage``, so the same code runs on the host and on a GPU:

    - mask: ``inmask`` (true: not to be used) grown by 3x3, plus pixels ``>= satlevel`` whose
      median exceeds ``satlevel / 10`` grown twice by a 5x5 box without its corners;
    - per iteration: ``S = L+ / (2 N)`` with ``L+`` from :func:`subsampled_laplacian` and the noise
      ``N = sqrt(med7(var))``, ``var = data + rn^2`` (floor 1e-5); ``S' = S - med7(S)``; fine
      structure ``F = (med5(data) - med9(med5(data))) / N`` (floor 0.01); hits are good pixels with
      ``S' > sigclip`` and ``S' / F > objlim``, grown by 3x3 keeping ``S' > sigclip``, then
      grown again keeping ``S' > sigfrac * sigclip``; they are replaced in ``data`` and ``var`` by
      the masked 5x5 median before the next iteration, which stops when none are new.

    ``medN`` are astroscrappy's separable medians (rows of N, then columns) with ``sepmed``, else
    full ``5/5/3/7`` medians. Unlike astroscrappy, edges are replicated rather than skipped (the
    host path's cells see the same). ``allowed`` (boolean image, optional): hits only there, e.g.
    :func:`candidate_pixels` (the pixels around sharp outliers), which leaves out what a full-frame
    L.A.Cosmic also flags beside bright stars and on sky-noise pairs. ``data`` (float32) is
    cleaned in place; returns the ``(n, 2)`` ``[y, x]`` hits, row-major, on ``data``'s array module.

    Array functions used, each in NumPy/SciPy and with the same signature in CuPy/cupyx:
    ``pad(mode='edge')``, ``zeros``, ``maximum``, ``sqrt``, ``where``, ``clip``, ``arange``, ``take``, ``sort(axis)``,
    ``median``, ``argwhere``, ``count_nonzero``, ``ones``; ``ndimage.median_filter(size, mode='nearest')``,
    ``ndimage.binary_dilation(structure, iterations)``.
    """
    xp = array_module(data)
    ndi = ndimage_module(xp)
    f32 = np.float32
    clean = data if data.dtype == f32 else data.astype(f32)
    var = clean + f32(read_noise * read_noise)
    box3 = xp.ones((3, 3), bool)
    mask = ndi.binary_dilation(inmask != 0, structure=box3)
    sat = clean >= f32(satlevel)
    if bool(sat.any()):
        sat &= _median(ndi, clean, 7, 5, sepmed) > f32(satlevel / 10)
        disc = xp.ones((5, 5), bool)
        disc[::4, ::4] = False
        mask |= ndi.binary_dilation(sat, structure=disc, iterations=2)
    usable = ~mask
    good = usable if allowed is None else usable & allowed
    crmask = xp.zeros(clean.shape, bool)

    def fallback(a):                          # astroscrappy's background level: median of the good pixels
        return xp.median(a[usable]).astype(f32)

    for _ in range(niter):
        noise = xp.sqrt(xp.maximum(_median(ndi, var, 7, 5, sepmed), f32(1e-5)))
        s = subsampled_laplacian(clean, xp)
        s /= 2 * noise
        sp = s - _median(ndi, s, 7, 5, sepmed)
        del s
        fine = _median(ndi, clean, 5, 3, sepmed)
        fine = (fine - _median(ndi, fine, 9, 7, sepmed)) / noise
        fine = xp.maximum(fine, f32(0.01))
        hits = (sp > sigclip) & good & (sp / fine > objlim)
        del fine, noise
        hits = ndi.binary_dilation(hits, structure=box3) & good & (sp > sigclip)
        hits = ndi.binary_dilation(hits, structure=box3) & good & (sp > sigfrac * sigclip)
        del sp
        if not int(xp.count_nonzero(hits)):
            break
        crmask |= hits
        ys, xs = xp.nonzero(crmask)
        _clean_medmask((clean, var), crmask | mask, ys, xs, fallback, xp)
    out = xp.argwhere(crmask)
    if clean is not data:
        data[out[:, 0], out[:, 1]] = clean[out[:, 0], out[:, 1]]
    return out
