"""Satellite and aircraft trails: a Hough transform of a thresholded, binned image.

The paper used MaxiTrack. Here (no external binary, about a second on a full frame):

1. the unmasked pixels are mean-binned ``bin x bin`` (``bin`` grows so the binned image is at
   most 2048 px long; the per-pixel significance of a trail wider than a pixel does not depend on
   ``bin``; blocks more than half masked are ignored) and its sky is removed (sep background of
   the binned image, mesh 1/8 of its size, 16-64 px);
2. pixels above ``threshold`` sigma are kept, connected components (8-connectivity) that are
   small or round (stars, galaxies, noise) are dropped: a trail is a long thin component or a
   string of thin fragments;
3. the straight-line Hough transform ``rho = x cos(theta) + y sin(theta)`` of the kept pixels is
   searched for peaks whose votes exceed both ``min_length / bin / 2`` and the noise expectation
   ``density x chord(rho, theta)`` by 5 sigma (Poisson); each accepted line's pixels are removed
   (their votes subtracted) and the search repeats;
4. the line is cut into segments that are brighter than the parallels beside them (16-px bins,
   see :func:`_segments`), and each segment's half-width is measured on the
   full-resolution image from the median perpendicular profile (1.5 x its extent above 2 sigma).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage

from ..sources.background import mesh_background


@dataclass
class Trail:
    """A straight trail segment in full-resolution 0-based pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    half_width: float

    @property
    def length(self) -> float:
        return float(np.hypot(self.x1 - self.x0, self.y1 - self.y0))


@numba.njit(parallel=True, cache=True, nogil=True)
def _bin_masked(data, mask, factor):
    ny, nx = data.shape[0] // factor, data.shape[1] // factor
    out = np.empty((ny, nx), np.float32)
    for by in numba.prange(ny):
        for bx in range(nx):
            total, n = 0.0, 0
            for y in range(by * factor, (by + 1) * factor):
                for x in range(bx * factor, (bx + 1) * factor):
                    if not mask[y, x]:
                        total += data[y, x]
                        n += 1
            out[by, bx] = total / n if 2 * n >= factor * factor else np.nan
    return out


def bin_image(data: np.ndarray, factor: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean of the unmasked pixels of ``factor x factor`` blocks (NaN where more than half are
    masked; ``mask`` nonzero = masked); the edge remainder is dropped."""
    mask = np.zeros(data.shape, bool) if mask is None else np.ascontiguousarray(mask)
    return _bin_masked(np.ascontiguousarray(data, np.float32), mask, int(factor))


@numba.njit(cache=True, nogil=True)
def _chord(rho, c, s, width, height):
    """Length inside ``[0, width] x [0, height]`` of the line ``rho (c, s) + t (-s, c)``."""
    lo, hi = -np.inf, np.inf
    px, py = rho * c, rho * s
    if abs(s) > 1e-12:
        lo, hi = max(lo, min((px - width) / s, px / s)), min(hi, max((px - width) / s, px / s))
    elif not 0 <= px <= width:
        return 0.0
    if abs(c) > 1e-12:
        lo, hi = max(lo, min(-py / c, (height - py) / c)), min(hi, max(-py / c, (height - py) / c))
    elif not 0 <= py <= height:
        return 0.0
    return max(hi - lo, 0.0)


@numba.njit(parallel=True, cache=True, nogil=True)
def _hough(xs, ys, cos, sin, offset, acc, sign):
    """Add ``sign`` to the Hough accumulator ``acc[theta, rho + offset]`` for every point."""
    for i in numba.prange(cos.size):
        for j in range(xs.size):
            acc[i, int(np.rint(xs[j] * cos[i] + ys[j] * sin[i])) + offset] += sign


@numba.njit(cache=True, nogil=True)
def _row_best(acc, i, rho, cos, sin, width, height, density, min_votes):
    best, where = -np.inf, 0
    for k in range(rho.size):
        if acc[i, k] >= min_votes:
            expected = density * _chord(rho[k], cos[i], sin[i], width, height)
            signif = (acc[i, k] - expected) / np.sqrt(expected + 1.0)
            if signif > best:
                best, where = signif, k
    return best, where


@numba.njit(parallel=True, cache=True, nogil=True)
def _rows_best(acc, rho, cos, sin, width, height, density, min_votes):
    best = np.empty(cos.size)
    where = np.zeros(cos.size, np.int64)
    for i in numba.prange(cos.size):
        best[i], where[i] = _row_best(acc, i, rho, cos, sin, width, height, density, min_votes)
    return best, where


def _hough_lines(ys: np.ndarray, xs: np.ndarray, shape, min_votes: float, max_lines: int = 10):
    """Peaks ``(rho, theta)`` of the Hough transform of the points, strongest first.

    Significance of a cell = ``(votes - density x chord) / sqrt(density x chord + 1)``; a line is
    kept above 5 and ``min_votes``, then the points within 2 px of it are removed (their votes
    subtracted) and the search is repeated. Removing votes only lowers significances, so the
    per-theta maxima stay upper bounds and only the leading rows are re-evaluated (lazy greedy).
    """
    height, width = shape
    diag = int(np.ceil(np.hypot(height, width)))
    thetas = np.arange(0.0, np.pi, 2.0 / diag)
    rho = np.arange(-diag, diag + 1, dtype=float)
    density = len(xs) / float(height * width)
    cos, sin = np.cos(thetas), np.sin(thetas)
    xs, ys = xs.astype(np.float64), ys.astype(np.float64)
    acc = np.zeros((thetas.size, rho.size), np.int32)
    _hough(xs, ys, cos, sin, diag, acc, 1)
    args = (rho, cos, sin, float(width), float(height), density, float(min_votes))
    bound, where = _rows_best(acc, *args)
    keep = np.ones(len(xs), bool)
    lines = []
    while len(lines) < max_lines and keep.sum() >= min_votes:
        while True:                                   # exact maximum of the upper bounds
            it = int(np.argmax(bound))
            bound[it], where[it] = _row_best(acc, it, *args)
            if bound[it] >= bound.max():
                break
        if bound[it] < 5.0:
            break
        ir = where[it]
        lines.append((rho[ir], thetas[it]))
        gone = keep & (np.abs(xs * cos[it] + ys * sin[it] - rho[ir]) < 2.0)
        _hough(xs[gone], ys[gone], cos, sin, diag, acc, -1)
        keep &= ~gone
    return lines


def _segments(z: np.ndarray, rho: float, theta: float, min_length: float, step: int = 16):
    """Runs of a line where the significance ``z`` on it exceeds that beside it.

    ``z`` is sampled on the line and on parallels 4 and 6 px to either side; per ``step``-px bin
    the median on the line minus the median beside it must exceed 0.75 (a bin median of 16
    unit-noise samples has sigma 0.31), and a whole run must be longer than ``min_length``,
    0.5 sigma per pixel brighter than its surroundings and significant at 5 sigma.
    """
    height, width = z.shape
    c, s = np.cos(theta), np.sin(theta)
    half = np.hypot(height, width)
    t = np.arange(-half, half, 1.0)
    x, y = rho * c - t * s, rho * s + t * c
    inside = (x >= 0) & (y >= 0) & (x <= width - 1) & (y <= height - 1)
    t, x, y = t[inside], x[inside], y[inside]
    if t.size < min_length:
        return []
    on = ndimage.map_coordinates(z, [y, x], order=1, cval=np.nan)
    off = np.array([ndimage.map_coordinates(z, [y + d * s, x + d * c], order=1, cval=np.nan)
                    for d in (-6, -4, 4, 6)])
    nb = t.size // step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        excess = (np.nanmedian(on[:nb * step].reshape(nb, step), axis=1)
                  - np.nanmedian(off[:, :nb * step].reshape(4, nb, step).swapaxes(0, 1).reshape(nb, -1), axis=1))
    lit = ndimage.binary_closing(np.r_[False, np.nan_to_num(excess, nan=1.0) > 0.75, False], np.ones(3))[1:-1]
    runs, _ = ndimage.label(lit)
    out = []
    for sl in ndimage.find_objects(runs):
        a, b = sl[0].start * step, sl[0].stop * step
        good = np.isfinite(on[a:b])
        if b - a < min_length or good.sum() < min_length / 2:
            continue
        level = np.median(on[a:b][good]) - np.nanmedian(off[:, a:b])
        if level > 0.5 and level * np.sqrt(good.sum()) / 1.25 > 5.0:
            out.append((x[a], y[a], x[b - 1], y[b - 1]))
    return out


def _half_width(data: np.ndarray, sky: float, seg, nbin: int) -> float:
    """Mask half-width: ``1.5 x`` the extent above 2 sigma of the median perpendicular profile, + 1 px."""
    x0, y0, x1, y1 = seg
    length = np.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    t = np.linspace(0.05 * length, 0.95 * length, 400)
    d = np.arange(-8.0 * nbin, 8.0 * nbin + 0.5, 0.5)
    px = np.rint(x0 + ux * t[:, None] - uy * d[None, :]).astype(int)
    py = np.rint(y0 + uy * t[:, None] + ux * d[None, :]).astype(int)
    ok = (px >= 0) & (py >= 0) & (px < data.shape[1]) & (py < data.shape[0])
    vals = np.where(ok, data[np.clip(py, 0, data.shape[0] - 1), np.clip(px, 0, data.shape[1] - 1)] - sky, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        profile = np.nan_to_num(np.nanmedian(vals, axis=0))
    outer = np.abs(d) > 4 * nbin
    noise = 1.4826 * np.median(np.abs(profile[outer] - np.median(profile[outer])))
    above = profile > np.median(profile[outer]) + 2.0 * noise
    centre = int(np.argmax(np.where(np.abs(d) <= 2 * nbin, profile, -np.inf)))
    if not above[centre]:
        return float(nbin)
    lo, hi = centre, centre
    while lo > 0 and above[lo - 1]:
        lo -= 1
    while hi < d.size - 1 and above[hi + 1]:
        hi += 1
    return float(max(1.5 * max(abs(d[lo]), abs(d[hi])) + 1.0, nbin / 2.0 + 1.0))


@numba.njit(cache=True, nogil=True)
def _extents(labels, n):
    """Longer side of the bounding box of each label 1..n."""
    lo = np.full((n + 1, 2), labels.size, np.int64)
    hi = np.full((n + 1, 2), -1, np.int64)
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            k = labels[y, x]
            if k:
                lo[k, 0], hi[k, 0] = min(lo[k, 0], y), max(hi[k, 0], y)
                lo[k, 1], hi[k, 1] = min(lo[k, 1], x), max(hi[k, 1], x)
    return np.maximum(hi[1:, 0] - lo[1:, 0], hi[1:, 1] - lo[1:, 1]) + 1


def find_trails(data: np.ndarray, mask: np.ndarray | None = None, threshold: float = 1.5,
                min_length: float = 200.0, nbin: int = 4) -> list[Trail]:
    """Straight trails in an image (electrons); masked pixels are ignored."""
    nbin = max(nbin, -(-max(data.shape) // 2048))
    binned = bin_image(data, nbin, mask)
    bad = ~np.isfinite(binned)
    binned[bad] = 0.0
    mesh = int(np.clip(min(binned.shape) // 8, 16, 64))
    bkg = mesh_background(binned, bad, bw=mesh, bh=mesh)
    z = (binned - bkg.back()) / bkg.rms()
    hot = (z > threshold) & ~bad
    hot[:2], hot[-2:], hot[:, :2], hot[:, -2:] = False, False, False, False
    labels, n = ndimage.label(hot, structure=np.ones((3, 3)))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]   # pixels per label (every labelled pixel is hot)
    extent = _extents(labels, n)
    # thin: the component fills little of its bounding box's long side squared (a line fills ~1/extent)
    thin = (extent >= 4) & (sizes < 0.35 * extent ** 2)
    stars = (extent < 4) | ~thin
    keep_label = np.ones(n + 1, bool)
    keep_label[1:] = ~stars
    ys, xs = np.nonzero(keep_label[labels] & hot)
    lmin = min_length / nbin
    sky = float(np.median(bkg.back()))
    z[bad] = 0.0
    z[ndimage.binary_dilation(keep_label[labels] == 0, iterations=2) & (labels > 0)] = np.nan
    trails = []
    for rho, theta in _hough_lines(ys, xs, binned.shape, 0.5 * lmin):
        for seg in _segments(z, rho, theta, lmin):
            full = tuple(nbin * v + (nbin - 1) / 2.0 for v in seg)
            trails.append(Trail(*full, half_width=_half_width(data, sky, full, nbin)))
    return trails


def trail_pixels(shape: tuple[int, int], trails: list[Trail], margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x)`` indices of the pixels within ``half_width + margin`` of each trail segment (with repeats)."""
    ys, xs = [np.zeros(0, int)], [np.zeros(0, int)]
    for tr in trails:
        length = max(tr.length, 1.0)
        ux, uy = (tr.x1 - tr.x0) / length, (tr.y1 - tr.y0) / length
        hw = tr.half_width + margin
        t = np.arange(-hw, length + hw + 0.5, 0.5)
        d = np.arange(-hw, hw + 0.5, 0.5)
        px = np.rint(tr.x0 + ux * t[:, None] - uy * d[None, :]).astype(int).ravel()
        py = np.rint(tr.y0 + uy * t[:, None] + ux * d[None, :]).astype(int).ravel()
        ok = (px >= 0) & (py >= 0) & (px < shape[1]) & (py < shape[0])
        ys.append(py[ok])
        xs.append(px[ok])
    return np.concatenate(ys), np.concatenate(xs)
