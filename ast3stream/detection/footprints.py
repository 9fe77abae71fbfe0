"""Matched-filter SNR map and connected footprints of a difference image, without sep.

sep (single-threaded, a 2-D kernel, a copy of the image per sign) took most of the DIP lane's
detection time on a full frame. Here:

* :func:`matched_snr` is the PSF-fit SNR of a point source centred on each pixel,
  ``S = (D w) * K / sqrt(w * K^2)`` with ``w = 1 / sigma^2`` (0 on masked pixels) and ``K`` the
  pixel-integrated Gaussian of the difference PSF. ``K`` and ``K^2`` are separable, so the map is
  four 1-D convolutions: one fused numba pass over row strips (CPU), or CuPy's ``convolve1d`` (GPU).
  Both signs come from the one map.
* :func:`footprints` takes the unmasked pixels with ``|S| >= thresh`` (gathered on the device,
  only they come to the host), joins them into 8-connected footprints of one sign (runs of
  pixels per row, union-find of overlapping runs) and measures each as sep does: isophotal
  barycentre and second moments of the difference pixels ``sign x D`` over the footprint
  (``a``, ``b`` with SExtractor's correction of singular moments), ``npix``, the peak SNR, and
  flags: ``TRUNC`` (touches the image border) and ``MERGED`` (more than one local maximum of
  ``S`` reaching ``thresh + merge_rise``: two sources in one footprint, which sep's deblending
  splits and the detection cuts reject).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from scipy.special import erf

TRUNC = 1       #: footprint touches the image border
MERGED = 2      #: more than one significant peak in the footprint

#: columns of the :func:`footprints` record array
FIELDS = [("x", "f8"), ("y", "f8"), ("a", "f8"), ("b", "f8"), ("theta", "f8"), ("npix", "i8"), ("sign", "i8"),
          ("peak_snr", "f8"), ("flag", "i8")]


def gaussian_1d(fwhm: float, r: int) -> np.ndarray:
    """Pixel-integrated unit Gaussian on ``2r+1`` pixels: the 1-D factor of
    :func:`ast3stream.detection.photometry.gaussian_psf` at zero offset."""
    s = math.sqrt(2) * fwhm / 2.3548
    e = np.arange(-r - 0.5, r + 1.0)
    return (np.diff(erf(e / s)) / 2).astype(np.float32)


@numba.njit(parallel=True, cache=True, nogil=True)
def _matched(d, noise, mask, k, k2, out, block):
    ny, nx = d.shape
    r = k.size // 2
    nblock = (ny + block - 1) // block
    for b in numba.prange(nblock):
        y0, y1 = b * block, min((b + 1) * block, ny)
        h0, h1 = max(y0 - r, 0), min(y1 + r, ny)
        hn = np.zeros((h1 - h0, nx), np.float32)     # rows filtered in x: (D w) * k and w * k^2
        hd = np.zeros((h1 - h0, nx), np.float32)
        wrow = np.empty(nx, np.float32)
        drow = np.empty(nx, np.float32)
        for yy in range(h0, h1):
            for x in range(nx):
                s = noise[yy, x]
                w = np.float32(0.0)
                if mask[yy, x] == 0 and s > 0 and s < np.inf:
                    w = np.float32(1.0) / (s * s)
                wrow[x] = w
                drow[x] = d[yy, x] * w if w > 0 else np.float32(0.0)
            hn_row, hd_row = hn[yy - h0], hd[yy - h0]
            for j in range(k.size):                  # tap by tap: the inner loops run over contiguous x
                kj, k2j, o = k[j], k2[j], j - r
                for x in range(max(0, -o), min(nx, nx - o)):
                    hn_row[x] += drow[x + o] * kj
                    hd_row[x] += wrow[x + o] * k2j
        sn = np.empty(nx, np.float32)
        sd = np.empty(nx, np.float32)
        for y in range(y0, y1):
            sn[:] = 0
            sd[:] = 0
            for j in range(max(0, r - y), min(k.size, ny - y + r)):
                kj, k2j, yy = k[j], k2[j], y + j - r - h0
                for x in range(nx):
                    sn[x] += hn[yy, x] * kj
                    sd[x] += hd[yy, x] * k2j
            for x in range(nx):
                out[y, x] = sn[x] / np.sqrt(sd[x]) if sd[x] > 0 else np.float32(0.0)


def kernel_radius(fwhm: float) -> int:
    """Half-length [px] of the matched filter's 1-D Gaussian for a PSF of ``fwhm``."""
    return int(math.ceil(1.5 * fwhm))


def warm_matched_filter(largest_fwhm: float) -> None:
    """Compile CuPy's matched filter for every kernel length up to that of ``largest_fwhm`` (CuPy
    compiles one per length, i.e. per PSF width) on a tiny image."""
    import cupy as cp

    tiny = cp.zeros((64, 64), np.float32)
    for r in range(1, kernel_radius(largest_fwhm) + 1):
        matched_snr(tiny, tiny + 1, cp.zeros(tiny.shape, np.uint16), (r - 0.5) / 1.5)   # the FWHM of radius r


def matched_snr(d, noise, mask, fwhm: float):
    """Float32 matched-filter SNR map (module docstring) on the arrays' device (NumPy or CuPy)."""
    from .stamps import array_module

    k = gaussian_1d(fwhm, kernel_radius(fwhm))
    xp = array_module(d)
    if xp is np:
        out = np.empty(d.shape, np.float32)
        _matched(np.ascontiguousarray(d, np.float32), np.ascontiguousarray(noise, np.float32),
                 np.ascontiguousarray(mask), k, k * k, out, 32)
        return out
    from cupyx.scipy import ndimage

    return matched_snr_xp(d, noise, mask, k, xp, ndimage)


def matched_snr_xp(d, noise, mask, k: np.ndarray, xp, ndimage):
    """:func:`matched_snr` with the array module ``xp`` and its ``ndimage`` (CuPy's; NumPy's in the tests)."""
    noise = noise.astype(xp.float32, copy=False)
    good = (mask == 0) & (noise > 0) & xp.isfinite(noise)
    w = xp.where(good, 1.0 / xp.where(good, noise, 1.0) ** 2, 0.0).astype(xp.float32)
    kd, kd2 = xp.asarray(k), xp.asarray(k * k)
    num = ndimage.convolve1d(ndimage.convolve1d(xp.where(good, d, 0).astype(xp.float32) * w, kd, axis=1,
                                                mode="constant"), kd, axis=0, mode="constant")
    den = ndimage.convolve1d(ndimage.convolve1d(w, kd2, axis=1, mode="constant"), kd2, axis=0, mode="constant")
    return xp.where(den > 0, num / xp.sqrt(xp.maximum(den, 1e-30)), 0).astype(xp.float32)


@numba.njit(parallel=True, cache=True, nogil=True)
def _row_counts(snr, mask, thresh, counts):
    ny, nx = snr.shape
    for y in numba.prange(ny):
        n = 0
        for x in range(nx):
            if mask[y, x] == 0 and abs(snr[y, x]) >= thresh:
                n += 1
        counts[y] = n


@numba.njit(parallel=True, cache=True, nogil=True)
def _row_fill(snr, d, mask, thresh, start, xs, vs, ds):
    ny, nx = snr.shape
    for y in numba.prange(ny):
        i = start[y]
        for x in range(nx):
            if mask[y, x] == 0 and abs(snr[y, x]) >= thresh:
                xs[i] = x
                vs[i] = snr[y, x]
                ds[i] = d[y, x]
                i += 1


def _pixels(snr, d, mask, thresh: float):
    """Row starts (``ny + 1``), columns, SNR and difference values of the unmasked pixels
    with ``|snr| >= thresh``, row-major; gathered on the device."""
    from .stamps import array_module

    if array_module(snr) is not np:
        return pixels_xp(snr, d, mask, thresh)
    ny = snr.shape[0]
    counts = np.empty(ny, np.int64)
    mask = np.ascontiguousarray(mask)
    _row_counts(snr, mask, np.float32(thresh), counts)
    start = np.zeros(ny + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    n = int(start[-1])
    xs, vs, ds = np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.float32)
    _row_fill(snr, np.ascontiguousarray(d, np.float32), mask, np.float32(thresh), start, xs, vs, ds)
    return start, xs, vs, ds


def pixels_xp(snr, d, mask, thresh: float):
    """:func:`_pixels` with array operations (CuPy on a GPU; any array module)."""
    from .stamps import array_module, to_host

    xp = array_module(snr)
    flat = xp.flatnonzero(((mask == 0) & (xp.abs(snr) >= thresh)).ravel())
    vs, ds = to_host(snr.ravel()[flat]).astype(np.float32), to_host(d.ravel()[flat]).astype(np.float32)
    ys, xs = np.divmod(to_host(flat).astype(np.int64), snr.shape[1])
    start = np.searchsorted(ys, np.arange(snr.shape[0] + 1)).astype(np.int64)
    return start, xs, vs, ds


@numba.njit(cache=True, nogil=True)
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _value_at(start, xs, vs, y, x):
    """SNR of listed pixel (y, x), or 0 when it is not listed."""
    lo, hi = start[y], start[y + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        if xs[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    if lo < start[y + 1] and xs[lo] == x:
        return vs[lo]
    return np.float32(0.0)


@numba.njit(cache=True, nogil=True)
def _label(start, xs, vs, ds, nx, peak_level):
    ny = start.size - 1
    n = xs.size
    # runs of adjacent pixels of one sign in one row
    run_of = np.empty(n, np.int64)
    run_y = np.empty(n, np.int64)
    run_x0 = np.empty(n, np.int64)
    run_x1 = np.empty(n, np.int64)
    run_s = np.empty(n, np.int8)
    nr = 0
    row_run = np.zeros(ny + 1, np.int64)
    for y in range(ny):
        row_run[y] = nr
        for i in range(start[y], start[y + 1]):
            s = 1 if vs[i] > 0 else -1
            if i > start[y] and xs[i] == xs[i - 1] + 1 and s == run_s[nr - 1]:
                run_x1[nr - 1] = xs[i]
            else:
                run_y[nr], run_x0[nr], run_x1[nr], run_s[nr] = y, xs[i], xs[i], s
                nr += 1
            run_of[i] = nr - 1
    row_run[ny] = nr
    parent = np.arange(nr)
    for y in range(1, ny):
        j, j_end = row_run[y - 1], row_run[y]
        for i in range(row_run[y], row_run[y + 1]):
            while j < j_end and run_x1[j] < run_x0[i] - 1:
                j += 1
            k = j
            while k < j_end and run_x0[k] <= run_x1[i] + 1:
                if run_s[k] == run_s[i]:
                    a, b = _find(parent, i), _find(parent, k)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
                k += 1
    comp = np.full(nr, -1, np.int64)
    nc = 0
    for i in range(nr):
        root = _find(parent, i)
        if comp[root] < 0:
            comp[root] = nc
            nc += 1
        comp[i] = comp[root]
    sw = np.zeros(nc)
    sx = np.zeros(nc)
    sy = np.zeros(nc)
    sxx = np.zeros(nc)
    syy = np.zeros(nc)
    sxy = np.zeros(nc)
    npix = np.zeros(nc, np.int64)
    sign = np.zeros(nc, np.int64)
    peak = np.zeros(nc)
    npeak = np.zeros(nc, np.int64)
    flag = np.zeros(nc, np.int64)
    ox = np.zeros(nc)
    oy = np.zeros(nc)
    for y in range(ny):
        for i in range(start[y], start[y + 1]):
            c = comp[run_of[i]]
            x = xs[i]
            s = 1.0 if vs[i] > 0 else -1.0
            if npix[c] == 0:
                ox[c], oy[c] = x, y       # moments about the first pixel: no cancellation
                sign[c] = int(s)
            v = s * ds[i]
            dx, dy = x - ox[c], y - oy[c]
            sw[c] += v
            sx[c] += v * dx
            sy[c] += v * dy
            sxx[c] += v * dx * dx
            syy[c] += v * dy * dy
            sxy[c] += v * dx * dy
            npix[c] += 1
            a = s * vs[i]
            if a > peak[c]:
                peak[c] = a
            if y == 0 or y == ny - 1 or x == 0 or x == nx - 1:
                flag[c] |= 1
            if a >= peak_level:
                is_max = True
                for yy in range(max(y - 1, 0), min(y + 2, ny)):
                    for xx in range(max(x - 1, 0), min(x + 2, nx)):
                        if yy == y and xx == x:
                            continue
                        b = s * _value_at(start, xs, vs, yy, xx)
                        if b > a or (b == a and (yy < y or (yy == y and xx < x))):
                            is_max = False
                if is_max:
                    npeak[c] += 1
    out_x = np.empty(nc)
    out_y = np.empty(nc)
    out_a = np.empty(nc)
    out_b = np.empty(nc)
    out_t = np.empty(nc)
    for c in range(nc):
        if npeak[c] > 1:
            flag[c] |= 2
        w = sw[c]
        if w <= 0:          # a footprint of noise whose difference pixels sum below 0
            w = 1e-30
        mx, my = sx[c] / w, sy[c] / w
        x2 = sxx[c] / w - mx * mx
        y2 = syy[c] / w - my * my
        xy = sxy[c] / w - mx * my
        if x2 * y2 - xy * xy < 0.00694:     # SExtractor: singular moments of thin or tiny objects
            x2 += 0.0833333
            y2 += 0.0833333
        t1 = (x2 + y2) / 2
        t2 = math.sqrt(max(((x2 - y2) / 2) ** 2 + xy * xy, 0.0))
        out_x[c], out_y[c] = ox[c] + mx, oy[c] + my
        out_a[c] = math.sqrt(max(t1 + t2, 0.0))
        out_b[c] = math.sqrt(max(t1 - t2, 0.0))
        out_t[c] = 0.5 * math.atan2(2 * xy, x2 - y2)
    return out_x, out_y, out_a, out_b, out_t, npix, sign, peak, flag


def footprints(snr, d, mask, thresh: float, minarea: int = 1, merge_rise: float = 1.0) -> np.ndarray:
    """8-connected footprints of ``|snr| >= thresh`` (unmasked), one sign each, with at least
    ``minarea`` pixels: a record array of :data:`FIELDS` (module docstring)."""
    start, xs, vs, ds = _pixels(snr, d, mask, thresh)
    cols = _label(start, xs, vs, ds, snr.shape[1], np.float32(thresh + merge_rise))
    out = np.empty(len(cols[0]), FIELDS)
    for (name, _), col in zip(FIELDS, cols):
        out[name] = col
    return out[out["npix"] >= minarea]
