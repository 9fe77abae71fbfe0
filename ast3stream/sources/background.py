"""Mesh sky background and rms: a numba port of sep's ``src/background.c`` (sep 1.4.1, Barbary 2016),
which is SExtractor's algorithm (Bertin & Arnouts 1996, A&AS 117, 393, sect. 3.1).

:func:`mesh_background` gives the numbers of ``sep.Background(data, mask=mask, bw=bw, bh=bh, fw=fw,
fh=fh)`` (``maskthresh = fthresh = 0``), the same float32 operations in the same order, but runs on all
numba threads without the GIL (sep holds it: :mod:`.strips`). Units are those of ``data``.

1. Meshes: the frame is cut into ``bw x bh`` meshes from pixel ``(0, 0)``; the last column (row) of
   meshes holds the ``w % bw`` (``h % bh``) pixels left, without padding. A pixel counts unless it is
   masked (``mask`` nonzero) or ``<= -1e30`` (or NaN).
   *backstat*: mean and sigma of the mesh, then again within ``mean +- 2 sigma``; a mesh with fewer
   than half of its pixels valid is *bad*. *backhisto*: histogram of the valid pixels in ``mean +-
   5 sigma``, ``min(int(sqrt(2 / pi) 5 / 4 n + 1), 4096)`` bins. *backguess*: clipping at
   ``median +- 3 sigma`` of the histogram, iterated (at most 100 times) until sigma changes by less
   than 1e-4 relative or falls below 0.1 bin; the mode is ``2.5 median - 1.5 mean`` when
   ``|mean - median| < 0.3 sigma``, else the median; the rms is the clipped sigma.
2. *filterback*: a bad mesh takes the mean of the nearest good meshes (ties averaged; 0 and 1 if
   none), then an ``fw x fh`` median filter of the mesh grid, whose window shrinks symmetrically near
   the edges (a corner mesh keeps its value). ``globalback``/``globalrms`` are the medians of the
   filtered grids (``globalrms`` of the positive values when that median is ``<= 0``; 1 if none).
3. Interpolation to pixels: the node of mesh ``(j, i)`` lies at 0-based ``x = (i + 1/2) bw - 1/2``,
   ``y = (j + 1/2) bh`` (sep's half-pixel asymmetry between the axes, kept), also for partial meshes
   (the node spacing is ``bw`` and ``bh`` throughout). Natural cubic splines through the nodes along
   y (*makebackspline*), then, per row, along x (*backline*); beyond the outer nodes the end cubic is
   extrapolated. With one row of meshes the x interpolation is linear (sep: the y derivatives, zero,
   stand in for the x ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

BIG = 1e30                                   #: sep's "huge number": pixels <= -BIG are invalid, bad meshes -BIG
_MINGOODFRAC = 0.5                           #: valid fraction below which a mesh is bad
_NSIGMA = 5                                  #: histogram limits [sigma]
_NMAXLEVELS = 4096
_STEP = np.sqrt(2 / np.pi) * _NSIGMA / 4     #: histogram bins per valid pixel (QUANTIF_AMIN = 4)
_EPS = 1e-4
_F0, _F1, _F2, _F4, _F6 = (np.float32(v) for v in (0, 1, 2, 4, 6))
_FBIG = np.float32(BIG)
_INT_MIN = np.iinfo(np.int64).min

_JIT = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(**_JIT)
def _trunc(v):
    """C's ``(int64_t)v`` on x86-64: out of range or NaN gives INT64_MIN."""
    return np.int64(v) if -9.2e18 < v < 9.2e18 else _INT_MIN


@numba.njit(**_JIT)
def _backstat(data, mask, has_mask, y0, y1, x0, x1):
    """Clipped mean and sigma of one mesh and its histogram's ``nlevels, qscale, qzero``."""
    mean = sigma = 0.0
    npix = 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            pix = np.float64(data[y, x])
            if (not has_mask or not mask[y, x]) and pix > -BIG:
                mean += pix
                sigma += pix * pix
                npix += 1
    if np.float32(npix) < np.float32((x1 - x0) * (y1 - y0) * _MINGOODFRAC):
        return False, _F0, _F0, 0, _F1, _F0
    mean /= npix
    sig = sigma / npix - mean * mean
    sigma = np.sqrt(sig) if sig > 0.0 else 0.0
    lcut, hcut = np.float32(mean - 2.0 * sigma), np.float32(mean + 2.0 * sigma)
    mean = sigma = 0.0
    npix = 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            pix = np.float64(data[y, x])
            if (not has_mask or not mask[y, x]) and pix <= hcut and pix >= lcut:
                mean += pix
                sigma += pix * pix
                npix += 1
    mean /= npix
    sig = sigma / npix - mean * mean
    sigma = np.sqrt(sig) if sig > 0.0 else 0.0
    nlevels = min(np.int64(_STEP * npix + 1), _NMAXLEVELS)
    qscale = np.float32(2 * _NSIGMA * sigma / nlevels) if sigma > 0.0 else _F1
    return True, np.float32(mean), np.float32(sigma), nlevels, qscale, np.float32(mean - _NSIGMA * sigma)


@numba.njit(**_JIT)
def _backhisto(data, mask, has_mask, y0, y1, x0, x1, nlevels, qscale, qzero):
    """Histogram of the mesh's unmasked pixels: bin ``(int)(pix / qscale + 0.499999 - qzero / qscale)``."""
    histo = np.zeros(nlevels, np.int64)
    cste = np.float32(0.499999 - np.float64(qzero / qscale))
    for y in range(y0, y1):
        for x in range(x0, x1):
            if has_mask and mask[y, x]:
                continue
            v = data[y, x] / qscale + cste          # float32, truncated toward zero below
            if v > -1.0 and v < nlevels:
                histo[np.int64(v)] += 1
    return histo


@numba.njit(**_JIT)
def _backguess(histo, mean, sigma, qscale, qzero):
    """Mode and sigma of the mesh from its histogram (iterated 3-sigma clipping about the median)."""
    nlevelsm1 = histo.size - 1
    lcut, hcut = 0, nlevelsm1
    sig, sig1 = 10.0 * nlevelsm1, 1.0
    mea = med = np.float64(mean)
    n = 100
    while n > 0:
        n -= 1
        if not (sig >= 0.1 and abs(sig / sig1 - 1.0) > _EPS):
            break
        sig1 = sig
        total = lowsum = highsum = 0
        mea = sig = 0.0
        ilow, ihigh = lcut, hcut
        if lcut < 0:      # C reads before the histogram here (only after a division by zero): stop
            break
        for i in range(lcut, hcut + 1):
            if lowsum < highsum:
                lowsum += histo[ilow]
                ilow += 1
            else:
                highsum += histo[ihigh]
                ihigh -= 1
            pix = histo[i]
            total += pix
            dpix = np.float64(pix) * i
            mea += dpix
            sig += dpix * i
        if ihigh >= 0:
            med = ihigh + 0.5 + (np.float64(highsum) - np.float64(lowsum)) / (2.0 * max(histo[ilow], histo[ihigh]))
        else:
            med = 0.0
        if total:
            mea /= np.float64(total)
            sig = sig / total - mea * mea
        sig = np.sqrt(sig) if sig > 0.0 else 0.0
        ftemp = med - 3.0 * sig
        lcut = _trunc(ftemp + 0.5) if ftemp > 0.0 else 0
        ftemp = med + 3.0 * sig
        hcut = (_trunc(ftemp + 0.5) if ftemp > 0.0 else _trunc(ftemp - 0.5)) if ftemp < nlevelsm1 else nlevelsm1
    if abs(sig) > 0.0:
        if abs((mea - med) / sig) < 0.3:
            mode = qzero + (2.5 * med - 1.5 * mea) * qscale
        else:
            mode = qzero + med * qscale
    else:
        mode = qzero + mea * qscale
    return np.float32(mode), np.float32(sig * qscale)


@numba.njit(parallel=True, **_JIT)
def _meshes(data, mask, has_mask, bw, bh, back, sigma):
    """backstat, backhisto and backguess of every mesh (bad ones ``-BIG``), in parallel."""
    ny, nx = back.shape
    h, w = data.shape
    for k in numba.prange(ny * nx):
        j, i = k // nx, k % nx
        y0, x0 = j * bh, i * bw
        y1, x1 = min(y0 + bh, h), min(x0 + bw, w)
        good, mean, sig, nlevels, qscale, qzero = _backstat(data, mask, has_mask, y0, y1, x0, x1)
        if not good:
            back[j, i] = sigma[j, i] = -_FBIG
            continue
        histo = _backhisto(data, mask, has_mask, y0, y1, x0, x1, nlevels, qscale, qzero)
        back[j, i], sigma[j, i] = _backguess(histo, mean, sig, qscale, qzero)


@numba.njit(**_JIT)
def _fqmedian(values):
    """sep's ``fqmedian``: the middle value, or the float32 mean of the two middle ones."""
    ra = np.sort(values)
    n = ra.size
    if n < 2:
        return ra[0]
    if n & 1:
        return ra[n // 2]
    return np.float32((ra[n // 2 - 1] + ra[n // 2]) / 2.0)


@numba.njit(parallel=True, **_JIT)
def _filterback(back, sigma, fw, fh):
    """sep's ``filterback`` with ``fthresh = 0``: bad meshes filled, then the median filter.
    Returns the filtered grids and ``(globalback, globalrms)``."""
    ny, nx = back.shape
    filled, sfilled = back.copy(), sigma.copy()
    for k in numba.prange(ny * nx):
        py, px = k // nx, k % nx
        if back[py, px] > -BIG:
            continue
        d2min, nmin, val, sval = _FBIG, 0, _F0, _F0
        for y in range(ny):
            for x in range(nx):
                if back[y, x] > -BIG:
                    d2 = np.float32(x - px) * np.float32(x - px) + np.float32((y - py) * (y - py))
                    if d2 < d2min:
                        val, sval, nmin, d2min = back[y, x], sigma[y, x], 1, d2
                    elif d2 == d2min:
                        val += back[y, x]
                        sval += sigma[y, x]
                        nmin += 1
        filled[py, px] = val / np.float32(nmin) if nmin else _F0
        sfilled[py, px] = sval / np.float32(nmin) if nmin else _F1
    back2, sigma2 = np.empty_like(back), np.empty_like(sigma)
    for k in numba.prange(ny * nx):
        py, px = k // nx, k % nx
        npy = min(fh // 2, ny - 1 - py, py)
        npx = min(fw // 2, nx - 1 - px, px)
        win = filled[py - npy:py + npy + 1, px - npx:px + npx + 1].copy().ravel()
        med = _fqmedian(win)
        if abs(med - filled[py, px]) >= 0.0:
            back2[py, px] = med
            sigma2[py, px] = _fqmedian(sfilled[py - npy:py + npy + 1, px - npx:px + npx + 1].copy().ravel())
        else:   # NaN
            back2[py, px], sigma2[py, px] = filled[py, px], sfilled[py, px]
    globalback = _fqmedian(back2.ravel())
    globalrms = _fqmedian(sigma2.ravel())
    if globalrms <= 0.0:
        s = np.sort(sigma2.ravel())
        i = s.size - 1
        while i >= 0 and s[i] > 0.0:
            i -= 1
        globalrms = _fqmedian(s[i + 1:]) if 0 <= i < s.size - 1 else _F1
    return back2, sigma2, globalback, globalrms


@numba.njit(**_JIT)
def _spline(m, d, u):
    """Second derivatives ``d`` of the natural cubic spline through ``m`` (unit spacing), sep's float32
    recurrence; ``u`` is scratch of ``m.size - 1``."""
    n = m.size
    d[0] = _F0
    if n < 2:
        return
    u[0] = _F0
    for y in range(1, n - 1):
        temp = np.float32(-1.0) / (d[y - 1] + _F4)
        d[y] = temp
        u[y] = temp * (u[y - 1] - _F6 * (m[y + 1] + m[y - 1] - _F2 * m[y]))
    d[n - 1] = _F0
    for y in range(n - 2, 0, -1):
        d[y] = (d[y] * d[y + 1] + u[y]) / 6.0


@numba.njit(**_JIT)
def _yspline(grid):
    """makebackspline: the y second derivatives of each column of the mesh grid."""
    ny, nx = grid.shape
    d = np.zeros_like(grid)
    col, dcol, u = np.empty(ny, np.float32), np.empty(ny, np.float32), np.empty(max(ny - 1, 1), np.float32)
    for x in range(nx):
        col[:] = grid[:, x]
        _spline(col, dcol, u)
        d[:, x] = dcol
    return d


@numba.njit(**_JIT)
def _columns(width, nbx, bw):
    """backline's walk along a row: per pixel the left node and ``dx``, ``cdx = 1 - dx`` and the
    cubic factors ``dx^2 - 1``, ``cdx^2 - 1`` (float32, accumulated as sep does)."""
    lo = np.zeros(width, np.int64)
    dxs, cdxs = np.empty(width, np.float32), np.empty(width, np.float32)
    dx2, cdx2 = np.empty(width, np.float32), np.empty(width, np.float32)
    xstep = np.float32(1.0 / bw)
    changepoint = bw // 2
    dx = (xstep - _F1) / _F2
    dx0 = np.float32((bw + 1) % 2) * xstep / _F2
    x = i = node = 0
    for col in range(width):
        if i == changepoint and 0 < x < nbx - 1:
            node += 1
            dx = dx0
        cdx = _F1 - dx
        lo[col], dxs[col], cdxs[col] = node, dx, cdx
        dx2[col], cdx2[col] = dx * dx - _F1, cdx * cdx - _F1
        if i == bw:
            x += 1
            i = 0
        i += 1
        dx += xstep
    return lo, dxs, cdxs, dx2, cdx2


@numba.njit(parallel=True, **_JIT)
def _interpolate(grid, dgrid, bh, cols, data, out, mode):
    """Bicubic-spline map of ``grid`` (backline per row): ``mode`` 0 writes it to ``out``,
    1 subtracts it from ``out``, 2 writes ``data - map`` to ``out``."""
    lo, dxs, cdxs, dx2, cdx2 = cols
    nby, nbx = grid.shape
    h, w = out.shape
    for y in numba.prange(h):
        node, dnode = np.empty(nbx, np.float32), np.zeros(nbx, np.float32)
        if nby > 1:
            dy = np.float32(np.float32(y) / np.float32(bh) - 0.5)
            yl = np.int64(dy)
            dy = dy - np.float32(yl)
            if yl >= nby - 1:
                yl = nby - 2
                dy = np.float32(dy + 1.0)
            cdy = _F1 - dy
            dy3, cdy3 = dy * dy * dy - dy, cdy * cdy * cdy - cdy
            for x in range(nbx):
                node[x] = cdy * grid[yl, x] + dy * grid[yl + 1, x] + cdy3 * dgrid[yl, x] + dy3 * dgrid[yl + 1, x]
            if nbx > 1:
                _spline(node, dnode, np.empty(nbx - 1, np.float32))
        else:
            node[:] = grid[0]
            dnode[:] = dgrid[0]
        for x in range(w):
            if nbx > 1:
                k = lo[x]
                v = (cdxs[x] * (node[k] + cdx2[x] * dnode[k])
                     + dxs[x] * (node[k + 1] + dx2[x] * dnode[k + 1]))
            else:
                v = node[0]
            if mode == 0:
                out[y, x] = v
            elif mode == 1:
                out[y, x] -= v
            else:
                out[y, x] = data[y, x] - v


@dataclass(frozen=True)
class MeshBackground:
    """The mesh grids of :func:`mesh_background` (float32, ``(ny, nx)``) and their spline derivatives;
    :meth:`back`, :meth:`rms` and :meth:`subfrom` as ``sep.Background``'s."""
    grid: np.ndarray
    rms_grid: np.ndarray
    dgrid: np.ndarray
    drms_grid: np.ndarray
    shape: tuple[int, int]
    bw: int
    bh: int
    globalback: float
    globalrms: float

    def _map(self, grid, dgrid, out, data=None, mode=0):
        cols = _columns(self.shape[1], grid.shape[1], self.bw)
        _interpolate(grid, dgrid, self.bh, cols, out if data is None else data, out, mode)
        return out

    def back(self) -> np.ndarray:
        """The background map (float32)."""
        return self._map(self.grid, self.dgrid, np.empty(self.shape, np.float32))

    def rms(self) -> np.ndarray:
        """The background rms map (float32)."""
        return self._map(self.rms_grid, self.drms_grid, np.empty(self.shape, np.float32))

    def subfrom(self, data: np.ndarray) -> None:
        """Subtract the background map from ``data`` (float32 or float64, C-contiguous) in place."""
        self._map(self.grid, self.dgrid, data, mode=1)

    def subtracted(self, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``data - back()`` in one pass, into ``out`` (float32) when given."""
        out = np.empty(self.shape, np.float32) if out is None else out
        return self._map(self.grid, self.dgrid, out, data=np.ascontiguousarray(data, np.float32), mode=2)


def mesh_background(data: np.ndarray, mask: np.ndarray | None = None, *, bw: int = 64, bh: int = 64,
                    fw: int = 3, fh: int = 3) -> MeshBackground:
    """sep's / SExtractor's mesh background of ``data`` (module docstring): ``bw x bh`` meshes, an
    ``fw x fh`` median filter; ``mask`` (nonzero = masked) optional."""
    data = np.ascontiguousarray(data, np.float32)
    has_mask = mask is not None
    mask = (np.ascontiguousarray(mask if mask.dtype == bool else mask > 0) if has_mask
            else np.zeros((1, 1), bool))
    h, w = data.shape
    ny, nx = max((h - 1) // bh + 1, 1), max((w - 1) // bw + 1, 1)
    back, sigma = np.empty((ny, nx), np.float32), np.empty((ny, nx), np.float32)
    _meshes(data, mask, has_mask, bw, bh, back, sigma)
    back, sigma, globalback, globalrms = _filterback(back, sigma, fw, fh)
    return MeshBackground(back, sigma, _yspline(back), _yspline(sigma), (h, w), bw, bh,
                          float(globalback), float(globalrms))
